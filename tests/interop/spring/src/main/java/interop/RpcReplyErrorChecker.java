package interop;

import java.nio.charset.StandardCharsets;
import java.util.AbstractMap.SimpleImmutableEntry;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;

/**
 * A ReplyingKafkaTemplate reply error checker for kafka-rpc handlers (docs/protocol.md):
 * a reply whose rpc-status is not 0 completes the caller's future exceptionally with a
 * {@link RpcStatusException}. A reply without rpc-status is OK.
 *
 * <pre>
 * template.setReplyErrorChecker(new RpcReplyErrorChecker());
 * </pre>
 */
public class RpcReplyErrorChecker implements Function<ConsumerRecord<?, ?>, Exception> {

    static final String STATUS = "rpc-status";
    static final String MESSAGE = "rpc-message";
    static final String TRAILER_PREFIX = "rpc-tm-";
    private static final int UNKNOWN = 2;

    @Override
    public Exception apply(ConsumerRecord<?, ?> reply) {
        Header status = reply.headers().lastHeader(STATUS);
        if (status == null) {
            return null;
        }
        int code;
        try {
            code = Integer.parseInt(new String(status.value(), StandardCharsets.US_ASCII));
        } catch (NumberFormatException e) {
            return new RpcStatusException(UNKNOWN, "malformed rpc-status header", List.of());
        }
        if (code == 0) {
            return null;
        }
        if (code < 0 || code >= RpcStatusException.NAMES.size()) {
            code = UNKNOWN; // as gRPC reads an unknown code
        }
        Header message = reply.headers().lastHeader(MESSAGE);
        List<Map.Entry<String, byte[]>> trailers = new ArrayList<>();
        for (Header header : reply.headers()) {
            if (header.key().startsWith(TRAILER_PREFIX)) {
                byte[] value = header.value() == null ? new byte[0] : header.value();
                trailers.add(new SimpleImmutableEntry<>(header.key().substring(TRAILER_PREFIX.length()), value));
            }
        }
        String details = message == null || message.value() == null
                ? "" : new String(message.value(), StandardCharsets.UTF_8);
        return new RpcStatusException(code, details, trailers);
    }
}
