package bench;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.annotation.EnableKafka;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.config.KafkaListenerEndpointRegistry;
import org.springframework.kafka.core.ConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.core.ProducerFactory;
import org.springframework.kafka.listener.ContainerProperties;
import org.springframework.kafka.listener.KafkaMessageListenerContainer;
import org.springframework.kafka.listener.MessageListenerContainer;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.messaging.handler.annotation.SendTo;

/**
 * The Spring Kafka peer of the benchmark (scenario "spring").
 *
 * <pre>
 * java -cp ... bench.SpringBench replier  --bootstrap H:P --request-topic T --group G [--concurrency 1]
 * java -cp ... bench.SpringBench requester --bootstrap H:P --request-topic T --reply-topic R --group G
 *          --payloads 100,10240 --in-flight 1,16 --warmup 2 --duration 6 --prewarm 3
 * </pre>
 *
 * The replier is the textbook {@code @KafkaListener} + {@code @SendTo} echo; the requester a
 * {@code ReplyingKafkaTemplate} kept at N calls in flight with a semaphore. The requester speaks
 * the suite's line protocol (bench/stats.py): one JSON line when a cell's measured window opens
 * ("warm") and one when it closes ("done"). Producers use linger.ms=0 and acks=all, like ours
 * (Kafka 4's default linger.ms=5 would add about 5 ms to each hop).
 */
public final class SpringBench {

    private SpringBench() {
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opts = options(Arrays.copyOfRange(args, 1, args.length));
        switch (args[0]) {
            case "replier" -> replier(opts);
            case "requester" -> requester(opts);
            default -> throw new IllegalArgumentException("first argument: replier or requester");
        }
    }

    // ---- the replier: what a Spring user writes ----

    /** The whole replier: echo the request bytes; @SendTo answers to the kafka_replyTopic header. */
    public static class Echo {
        @KafkaListener(id = "bench-replier", groupId = "#{systemProperties['bench.group']}",
                topics = "#{systemProperties['bench.requestTopic']}")
        @SendTo
        public byte[] echo(byte[] request) {
            return request;
        }
    }

    @Configuration
    @EnableKafka
    public static class ReplierConfig {
        @Bean
        public ConsumerFactory<byte[], byte[]> consumerFactory() {
            return new DefaultKafkaConsumerFactory<>(consumerProps(System.getProperty("bench.bootstrap"),
                    System.getProperty("bench.group")));
        }

        @Bean
        public ProducerFactory<byte[], byte[]> producerFactory() {
            return new DefaultKafkaProducerFactory<>(producerProps(System.getProperty("bench.bootstrap")));
        }

        @Bean
        public KafkaTemplate<byte[], byte[]> kafkaTemplate(ProducerFactory<byte[], byte[]> producerFactory) {
            return new KafkaTemplate<>(producerFactory);
        }

        @Bean
        public ConcurrentKafkaListenerContainerFactory<byte[], byte[]> kafkaListenerContainerFactory(
                ConsumerFactory<byte[], byte[]> consumerFactory, KafkaTemplate<byte[], byte[]> kafkaTemplate) {
            var factory = new ConcurrentKafkaListenerContainerFactory<byte[], byte[]>();
            factory.setConsumerFactory(consumerFactory);
            factory.setReplyTemplate(kafkaTemplate);
            factory.setConcurrency(Integer.getInteger("bench.concurrency", 1));
            return factory;
        }

        @Bean
        public Echo echo() {
            return new Echo();
        }
    }

    private static void replier(Map<String, String> opts) throws InterruptedException {
        System.setProperty("bench.bootstrap", opts.get("bootstrap"));
        System.setProperty("bench.requestTopic", opts.get("request-topic"));
        System.setProperty("bench.group", opts.get("group"));
        System.setProperty("bench.concurrency", opts.getOrDefault("concurrency", "1"));
        var context = new AnnotationConfigApplicationContext(ReplierConfig.class);
        context.registerShutdownHook();
        MessageListenerContainer container = context.getBean(KafkaListenerEndpointRegistry.class)
                .getListenerContainer("bench-replier");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        while (container.getAssignedPartitions() == null || container.getAssignedPartitions().isEmpty()) {
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException("replier got no partition within 60 s");
            }
            Thread.sleep(50);
        }
        System.out.println("spring: replier ready " + container.getAssignedPartitions());
        System.out.flush();
        Thread.currentThread().join(); // until SIGTERM
    }

    // ---- the requester: a ReplyingKafkaTemplate kept at N calls in flight ----

    private static void requester(Map<String, String> opts) throws Exception {
        String bootstrap = opts.get("bootstrap");
        ProducerFactory<byte[], byte[]> producers = new DefaultKafkaProducerFactory<>(producerProps(bootstrap));
        ConsumerFactory<byte[], byte[]> consumers = new DefaultKafkaConsumerFactory<>(
                consumerProps(bootstrap, opts.get("group")));
        var replies = new KafkaMessageListenerContainer<>(consumers, new ContainerProperties(opts.get("reply-topic")));
        replies.setBeanName("bench-replies");
        var template = new ReplyingKafkaTemplate<>(producers, replies);
        template.setDefaultReplyTimeout(Duration.ofSeconds(30));
        template.afterPropertiesSet();
        template.start();
        if (!template.waitForAssignment(Duration.ofSeconds(60))) {
            throw new IllegalStateException("no reply partition assigned within 60 s");
        }
        double warmup = Double.parseDouble(opts.getOrDefault("warmup", "2"));
        double duration = Double.parseDouble(opts.getOrDefault("duration", "6"));
        double prewarm = Double.parseDouble(opts.getOrDefault("prewarm", "3"));
        String topic = opts.get("request-topic");
        String[] payloads = opts.get("payloads").split(",");
        if (prewarm > 0) {
            runCell(template, topic, Integer.parseInt(payloads[0]), 16, 0, prewarm, false);
        }
        for (String payload : payloads) {
            for (String inFlight : opts.get("in-flight").split(",")) {
                runCell(template, topic, Integer.parseInt(payload), Integer.parseInt(inFlight), warmup, duration, true);
            }
        }
        template.stop();
        replies.stop();
        System.exit(0);
    }

    private static void runCell(ReplyingKafkaTemplate<byte[], byte[], byte[]> template, String topic, int payload,
            int inFlight, double warmup, double duration, boolean report) throws InterruptedException {
        byte[] value = requestBytes(payload);
        var recorder = new Recorder();
        var slots = new Semaphore(inFlight);
        long start = System.nanoTime();
        long opens = start + (long) (warmup * 1e9);
        long closes = opens + (long) (duration * 1e9);
        boolean open = false;
        while (true) {
            long now = System.nanoTime();
            if (!open && now >= opens) {
                recorder.open(now);
                open = true;
                if (report) {
                    emit("warm", payload, inFlight, "");
                }
            }
            if (now >= closes) {
                break;
            }
            if (!slots.tryAcquire(5, TimeUnit.MILLISECONDS)) {
                continue;
            }
            long t0 = System.nanoTime();
            try {
                template.sendAndReceive(new ProducerRecord<>(topic, value))
                        .whenComplete((reply, error) -> {
                            recorder.add(t0, System.nanoTime(), error == null);
                            slots.release();
                        });
            }
            catch (RuntimeException ex) {
                recorder.add(t0, System.nanoTime(), false);
                slots.release();
            }
        }
        String stats = recorder.close(System.nanoTime());
        if (report) {
            emit("done", payload, inFlight, stats);
        }
        // Let the calls still in flight finish before the next cell.
        if (slots.tryAcquire(inFlight, 60, TimeUnit.SECONDS)) {
            slots.release(inFlight);
        }
    }

    /** Latencies of the calls that end inside the measured window. */
    static final class Recorder {
        private long opened = Long.MAX_VALUE;
        private long closed = Long.MAX_VALUE;
        private long[] samples = new long[1 << 16];
        private int count;
        private int errors;

        synchronized void open(long now) {
            opened = now;
        }

        synchronized void add(long t0, long t1, boolean ok) {
            if (t1 < opened || t1 > closed) {
                return;
            }
            if (!ok) {
                errors++;
                return;
            }
            if (count == samples.length) {
                samples = Arrays.copyOf(samples, count * 2);
            }
            samples[count++] = t1 - t0;
        }

        synchronized String close(long now) {
            closed = now;
            long[] sorted = Arrays.copyOf(samples, count);
            Arrays.sort(sorted);
            double sum = 0;
            for (long s : sorted) {
                sum += s;
            }
            return String.format(Locale.ROOT,
                    "\"calls\": %d, \"errors\": %d, \"seconds\": %.4f, \"latency_ms\": {\"p50\": %.4f, \"p90\": %.4f, "
                            + "\"p99\": %.4f, \"p999\": %.4f, \"max\": %.4f, \"mean\": %.4f}",
                    count, errors, (closed - opened) / 1e9, rank(sorted, 0.50), rank(sorted, 0.90), rank(sorted, 0.99),
                    rank(sorted, 0.999), rank(sorted, 1.0), count == 0 ? 0.0 : sum / count / 1e6);
        }

        /** Nearest-rank percentile in milliseconds, as bench/stats.py computes it. */
        private static double rank(long[] sorted, double q) {
            if (sorted.length == 0) {
                return 0.0;
            }
            int index = (int) Math.ceil(q * sorted.length) - 1;
            return sorted[Math.max(0, Math.min(sorted.length - 1, index))] / 1e6;
        }
    }

    // ---- shared ----

    /** rpctest.v1.Everything{blob = "x" * n} serialized: field 17, wire type 2, then the bytes. */
    static byte[] requestBytes(int payload) {
        List<Byte> out = new ArrayList<>();
        varint(out, (17 << 3) | 2);
        varint(out, payload);
        byte[] bytes = new byte[out.size() + payload];
        for (int i = 0; i < out.size(); i++) {
            bytes[i] = out.get(i);
        }
        Arrays.fill(bytes, out.size(), bytes.length, (byte) 'x');
        return bytes;
    }

    private static void varint(List<Byte> out, int value) {
        while ((value & ~0x7F) != 0) {
            out.add((byte) ((value & 0x7F) | 0x80));
            value >>>= 7;
        }
        out.add((byte) value);
    }

    static Map<String, Object> producerProps(String bootstrap) {
        Map<String, Object> props = new HashMap<>();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
        props.put(ProducerConfig.LINGER_MS_CONFIG, 0);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.CLIENT_ID_CONFIG, "bench-spring-" + UUID.randomUUID().toString().substring(0, 8));
        return props;
    }

    static Map<String, Object> consumerProps(String bootstrap, String group) {
        Map<String, Object> props = new HashMap<>();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        // Fresh topics each run: nothing stale to skip, and no request sent before the
        // position is resolved can be missed.
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        return props;
    }

    private static void emit(String event, int payload, int inFlight, String stats) {
        String extra = stats.isEmpty() ? "" : ", " + stats;
        System.out.println(String.format(Locale.ROOT, "{\"event\": \"%s\", \"payload\": %d, \"in_flight\": %d%s}",
                event, payload, inFlight, extra));
        System.out.flush();
    }

    private static Map<String, String> options(String[] args) {
        Map<String, String> opts = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --name value, got " + args[i]);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        return opts;
    }
}
