package interop;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.env.MapPropertySource;
import org.springframework.kafka.annotation.EnableKafka;
import org.springframework.kafka.annotation.KafkaListener;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.core.DefaultKafkaConsumerFactory;
import org.springframework.kafka.core.DefaultKafkaProducerFactory;
import org.springframework.kafka.core.KafkaAdmin;
import org.springframework.kafka.core.KafkaTemplate;
import org.springframework.kafka.listener.ConsumerSeekAware;
import org.springframework.messaging.Message;
import org.springframework.messaging.handler.annotation.SendTo;
import org.springframework.messaging.support.MessageBuilder;

/**
 * An ordinary Spring Kafka replier that knows nothing of kafka-rpc's rpc-* headers: a
 * {@code @KafkaListener} + {@code @SendTo} service for interop.v1.Shout
 * (tests/interop/protos/interop/v1/shout.proto), called through our gRPC frontend by
 * tests/test_interop_spring.py.
 *
 * <pre>
 * java -cp ... interop.Replier --bootstrap 127.0.0.1:9092 --prefix t0123456789.
 * </pre>
 *
 * Prints a JSON line when each listener has its partitions ({"event": "assigned"}) and one
 * per request it receives ({"event": "request"}). Runs until SIGTERM.
 */
@Configuration
@EnableKafka
public class Replier {

    public static void main(String[] argv) throws InterruptedException {
        Args args = new Args(argv);
        AnnotationConfigApplicationContext context = new AnnotationConfigApplicationContext();
        // ${bootstrap} and ${prefix} in the annotations below come from the command line.
        context.getEnvironment().getPropertySources().addFirst(new MapPropertySource("args", Map.of(
                "bootstrap", args.get("bootstrap"), "prefix", args.get("prefix"))));
        context.register(Replier.class);
        context.registerShutdownHook();
        context.refresh();
        new CountDownLatch(1).await();
    }

    @Bean
    public KafkaAdmin admin(@Value("${bootstrap}") String bootstrap) {
        return new KafkaAdmin(Map.of(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap));
    }

    @Bean
    public NewTopic upperTopic(@Value("${prefix}") String prefix) {
        return new NewTopic(prefix + "interop.shout.upper", 4, (short) 1);
    }

    @Bean
    public NewTopic ignoreTopic(@Value("${prefix}") String prefix) {
        return new NewTopic(prefix + "interop.shout.ignore", 4, (short) 1);
    }

    @Bean
    public NewTopic refuseTopic(@Value("${prefix}") String prefix) {
        return new NewTopic(prefix + "interop.shout.refuse", 4, (short) 1);
    }

    @Bean
    public KafkaTemplate<byte[], byte[]> replyTemplate(@Value("${bootstrap}") String bootstrap) {
        return new KafkaTemplate<>(new DefaultKafkaProducerFactory<>(Map.of(
                ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class,
                ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class)));
    }

    @Bean
    public ConcurrentKafkaListenerContainerFactory<byte[], byte[]> kafkaListenerContainerFactory(
            @Value("${bootstrap}") String bootstrap, @Value("${prefix}") String prefix,
            KafkaTemplate<byte[], byte[]> replyTemplate) {
        ConcurrentKafkaListenerContainerFactory<byte[], byte[]> factory = new ConcurrentKafkaListenerContainerFactory<>();
        factory.setConsumerFactory(new DefaultKafkaConsumerFactory<>(Map.of(
                ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ConsumerConfig.GROUP_ID_CONFIG, prefix + "spring-replier",
                ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest",
                ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class,
                ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class)));
        factory.setReplyTemplate(replyTemplate); // what @SendTo sends with
        factory.getContainerProperties().setPollTimeout(200); // quick shutdown
        return factory;
    }

    @Bean
    public ShoutListener shoutListener() {
        return new ShoutListener();
    }

    /** The listeners: plain Spring, Spring's headers only. */
    public static class ShoutListener implements ConsumerSeekAware {

        /** interop.v1.Shout/Upper: reply with the text upper-cased and the request's header names. */
        @KafkaListener(id = "upper", topics = "${prefix}interop.shout.upper")
        @SendTo // empty: to the request's kafka_replyTopic (and kafka_replyPartition, when set)
        public byte[] upper(ConsumerRecord<byte[], byte[]> request) {
            report(request);
            List<String> names = new ArrayList<>();
            for (Header header : request.headers()) {
                names.add(header.key());
            }
            return Proto.shouted(Proto.text(request.value()).toUpperCase(Locale.ROOT), names);
        }

        /** interop.v1.Shout/Ignore: a listener that decides not to answer (a null result sends nothing). */
        @KafkaListener(id = "ignore", topics = "${prefix}interop.shout.ignore")
        @SendTo
        public byte[] ignore(ConsumerRecord<byte[], byte[]> request) {
            report(request);
            return null;
        }

        /**
         * interop.v1.Shout/Refuse: a listener that reports an error the kafka-rpc way, with
         * rpc-status and rpc-message headers on its reply (Spring adds the topic, partition and
         * correlation id to a returned Message as to any reply).
         */
        @KafkaListener(id = "refuse", topics = "${prefix}interop.shout.refuse")
        @SendTo
        public Message<byte[]> refuse(ConsumerRecord<byte[], byte[]> request) {
            report(request);
            return MessageBuilder.withPayload(new byte[0])
                    .setHeader("rpc-status", "9".getBytes(StandardCharsets.US_ASCII)) // FAILED_PRECONDITION
                    .setHeader("rpc-message", ("refusé: " + Proto.text(request.value())).getBytes(StandardCharsets.UTF_8))
                    .build();
        }

        private static void report(ConsumerRecord<byte[], byte[]> request) {
            Json.print(Json.object("event", "request", "topic", request.topic(), "partition", request.partition(),
                    "offset", request.offset(), "key", Json.base64(request.key()), "value", Json.base64(request.value()),
                    "headers", Json.headers(request.headers())));
        }

        @Override
        public void onPartitionsAssigned(Map<TopicPartition, Long> assignments, ConsumerSeekCallback callback) {
            List<String> partitions = new ArrayList<>();
            assignments.keySet().forEach(tp -> partitions.add(tp.toString()));
            Json.print(Json.object("event", "assigned", "partitions", partitions));
        }
    }
}
