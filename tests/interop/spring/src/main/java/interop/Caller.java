package interop;

import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.listener.ContainerProperties;
import org.springframework.kafka.listener.KafkaMessageListenerContainer;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.support.TopicPartitionOffset;

/**
 * A Spring Kafka ReplyingKafkaTemplate calling kafka-rpc handler processes
 * (tests/test_interop_spring.py; docs/interop.md explains it).
 *
 * <pre>
 * java -cp ... interop.Caller --bootstrap 127.0.0.1:9092 --prefix t0123456789.
 * </pre>
 *
 * Calls rpctest.v1.Kitchen (served by `python -m handlers tests.kitchen_service:Kitchen
 * --topic-prefix PREFIX`) with binary and with string correlation ids, each with a reply
 * container whose partitions a consumer group assigns (no kafka_replyPartition) and with one
 * pinned to partition 2 (kafka_replyPartition sent), then the error cases. Prints one JSON
 * line per case on stdout; logs go to stderr.
 */
public final class Caller {

    static final String KITCHEN_TOPIC = "rpctest.v1.Kitchen"; // Echo, Fail, ...: needs rpc-method
    static final String KEYED_TOPIC = "rpctest.keyed"; // carries Kitchen/Keyed alone: rpc-method optional
    static final String METHOD = "rpc-method";
    static final String DEADLINE = "rpc-deadline";
    static final int PINNED_PARTITION = 2;
    static final int ABORT = 0;
    static final int RAISE = 2;
    static final int RICH = 3;

    private final String prefix;

    private Caller(String prefix) {
        this.prefix = prefix;
    }

    public static void main(String[] argv) throws Exception {
        Args args = new Args(argv);
        String bootstrap = args.get("bootstrap");
        Caller caller = new Caller(args.get("prefix"));
        List<ReplyingKafkaTemplate<byte[], byte[], byte[]>> templates = new ArrayList<>();
        try {
            caller.createReplyTopics(bootstrap);
            for (boolean binary : new boolean[] {true, false}) {
                for (boolean pinned : new boolean[] {false, true}) {
                    templates.add(caller.template(bootstrap, binary, pinned));
                }
            }
            templates.forEach(ReplyingKafkaTemplate::start); // the containers join in parallel
            for (ReplyingKafkaTemplate<byte[], byte[], byte[]> template : templates) {
                if (!template.waitForAssignment(Duration.ofSeconds(30))) {
                    throw new IllegalStateException("reply container got no partition within 30 s");
                }
            }
            Json.print(Json.object("event", "ready", "uptime", ManagementFactory.getRuntimeMXBean().getUptime() / 1e3));
            int i = 0;
            for (String correlation : new String[] {"binary", "string"}) {
                for (String replies : new String[] {"group", "pinned"}) {
                    caller.successCases(templates.get(i++), correlation + "/" + replies);
                }
            }
            caller.errorCases(templates.get(0));
            Json.print(Json.object("event", "done"));
        } finally {
            templates.forEach(ReplyingKafkaTemplate::stop);
            templates.forEach(template -> {
                try {
                    template.destroy();
                } catch (Exception e) {
                    // shutting down anyway
                }
            });
        }
    }

    private String replyTopic(boolean binary, boolean pinned) {
        return this.prefix + "java.replies." + (binary ? "binary" : "string") + "." + (pinned ? "pinned" : "group");
    }

    private void createReplyTopics(String bootstrap) throws Exception {
        List<NewTopic> topics = new ArrayList<>();
        for (boolean binary : new boolean[] {true, false}) {
            for (boolean pinned : new boolean[] {false, true}) {
                topics.add(new NewTopic(replyTopic(binary, pinned), 4, (short) 1));
            }
        }
        try (Admin admin = Admin.create(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap))) {
            admin.createTopics(topics).all().get(30, TimeUnit.SECONDS);
        }
    }

    /**
     * The ReplyingKafkaTemplate of the docs, with our error checker. The template adds
     * kafka_replyTopic because its container reads one topic, and kafka_replyPartition when
     * the container is pinned to one partition.
     */
    private ReplyingKafkaTemplate<byte[], byte[], byte[]> template(String bootstrap, boolean binary, boolean pinned) {
        String topic = replyTopic(binary, pinned);
        Map<String, Object> consumer = Map.of(
                ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ConsumerConfig.GROUP_ID_CONFIG, topic,
                ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest",
                ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class,
                ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        Map<String, Object> producer = Map.of(
                ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class,
                ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        ContainerProperties properties = pinned
                ? new ContainerProperties(new TopicPartitionOffset(topic, PINNED_PARTITION))
                : new ContainerProperties(topic);
        properties.setPollTimeout(200); // stop() waits for the poll in progress: keep exits quick
        KafkaMessageListenerContainer<byte[], byte[]> container =
                new KafkaMessageListenerContainer<>(new DefaultKafkaConsumerFactory<>(consumer), properties);
        ReplyingKafkaTemplate<byte[], byte[], byte[]> template =
                new ReplyingKafkaTemplate<>(new DefaultKafkaProducerFactory<>(producer), container);
        template.setBinaryCorrelation(binary);
        template.setReplyErrorChecker(new RpcReplyErrorChecker());
        template.setDefaultReplyTimeout(Duration.ofSeconds(20));
        return template;
    }

    private void successCases(ReplyingKafkaTemplate<byte[], byte[], byte[]> template, String label) {
        // A single-method topic: Spring's headers alone are enough.
        ProducerRecord<byte[], byte[]> keyed = new ProducerRecord<>(
                this.prefix + KEYED_TOPIC, utf8("c-42"), Proto.keyedRequest("c-42", 7));
        call("keyed/" + label, template, keyed, value -> {
            Proto.Whoami whoami = Proto.Whoami.decode(value);
            return Json.object("pid", whoami.pid(), "peer", whoami.peer());
        });

        // A topic shared by several methods: name the method; an optional deadline lets
        // the handler skip the call once this caller has given up.
        Proto.Everything everything = new Proto.Everything(
                List.of("ç", "日本", ""), "héllo ✓ \uD83C\uDF89", 0, allBytes());
        ProducerRecord<byte[], byte[]> echo = new ProducerRecord<>(this.prefix + KITCHEN_TOPIC, null, everything.encode());
        echo.headers().add(METHOD, utf8("/rpctest.v1.Kitchen/Echo"));
        echo.headers().add(DEADLINE, utf8(Long.toString(System.currentTimeMillis() + 30_000)));
        call("echo/" + label, template, echo, value -> {
            Proto.Everything back = Proto.Everything.decode(value);
            return Json.object("tags", back.tags(), "text", back.text(), "number", back.number(), "blob", back.blob(),
                    "equal", back.tags().equals(everything.tags()) && back.text().equals(everything.text())
                            && java.util.Arrays.equals(back.blob(), everything.blob()));
        });
    }

    private void errorCases(ReplyingKafkaTemplate<byte[], byte[], byte[]> template) {
        call("fail/abort", template, kitchen("Fail", Proto.failRequest(ABORT, 5, "nicht gefunden ✗")), Json::base64);
        call("fail/raise", template, kitchen("Fail", Proto.failRequest(RAISE, 0, "boom")), Json::base64);
        call("fail/rich", template, kitchen("Fail", Proto.failRequest(RICH, 3, "bad field")), Json::base64);
        // Several methods share this topic, so without rpc-method the handler cannot tell which.
        ProducerRecord<byte[], byte[]> noMethod = new ProducerRecord<>(this.prefix + KITCHEN_TOPIC, null, new byte[0]);
        call("no-method", template, noMethod, Json::base64);
        // A deadline already past: the handler skips the call and sends nothing.
        ProducerRecord<byte[], byte[]> expired = kitchen("Nothing", new byte[0]);
        expired.headers().add(DEADLINE, utf8(Long.toString(System.currentTimeMillis() - 1_000)));
        call("expired", template, expired, Json::base64, Duration.ofSeconds(2));
    }

    private ProducerRecord<byte[], byte[]> kitchen(String method, byte[] value) {
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(this.prefix + KITCHEN_TOPIC, null, value);
        record.headers().add(METHOD, utf8("/rpctest.v1.Kitchen/" + method));
        return record;
    }

    private static void call(String name, ReplyingKafkaTemplate<byte[], byte[], byte[]> template,
            ProducerRecord<byte[], byte[]> record, Function<byte[], Object> decode) {
        call(name, template, record, decode, null);
    }

    private static void call(String name, ReplyingKafkaTemplate<byte[], byte[], byte[]> template,
            ProducerRecord<byte[], byte[]> record, Function<byte[], Object> decode, Duration timeout) {
        Map<String, Object> out = Json.object("case", name);
        long start = System.nanoTime();
        try {
            ConsumerRecord<byte[], byte[]> reply = (timeout == null
                    ? template.sendAndReceive(record) : template.sendAndReceive(record, timeout))
                    .get(60, TimeUnit.SECONDS);
            out.put("ok", true);
            out.put("reply", decode.apply(reply.value()));
            out.put("reply_topic", reply.topic());
            out.put("reply_partition", reply.partition());
            out.put("reply_key", Json.base64(reply.key()));
            out.put("reply_headers", Json.headers(reply.headers()));
        } catch (ExecutionException e) {
            out.put("ok", false);
            Throwable cause = e.getCause();
            out.put("error", cause.getClass().getSimpleName());
            if (cause instanceof RpcStatusException status) {
                out.put("code", status.code());
                out.put("status", status.status());
                out.put("message", status.details());
                out.put("status_details", Json.base64(status.statusDetails()));
            } else {
                out.put("message", String.valueOf(cause.getMessage()));
            }
        } catch (Exception e) {
            out.put("ok", false);
            out.put("error", e.getClass().getSimpleName());
            out.put("message", String.valueOf(e.getMessage()));
        }
        out.put("seconds", (System.nanoTime() - start) / 1e9);
        // The template added kafka_correlationId (and reply topic/partition) to the record itself.
        out.put("request_topic", record.topic());
        out.put("request_headers", Json.headers(record.headers()));
        Json.print(out);
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static byte[] allBytes() {
        byte[] bytes = new byte[256];
        for (int i = 0; i < bytes.length; i++) {
            bytes[i] = (byte) i;
        }
        return bytes;
    }
}
