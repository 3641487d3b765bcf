package interop;

import java.util.List;
import java.util.Map;

/**
 * A call answered with a non-OK gRPC status: the reply's rpc-status, rpc-message and
 * rpc-tm-* trailing metadata (docs/protocol.md), as thrown by {@link RpcReplyErrorChecker}.
 */
public class RpcStatusException extends RuntimeException {

    /** gRPC status names by code, 0 to 16. */
    static final List<String> NAMES = List.of(
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
            "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
            "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED");

    private final int code;
    private final String details;
    private final List<Map.Entry<String, byte[]>> trailers;

    public RpcStatusException(int code, String details, List<Map.Entry<String, byte[]>> trailers) {
        super(NAMES.get(code) + ": " + details);
        this.code = code;
        this.details = details;
        this.trailers = List.copyOf(trailers);
    }

    /** The gRPC status code, 1 to 16. */
    public int code() {
        return this.code;
    }

    /** The status name, e.g. NOT_FOUND. */
    public String status() {
        return NAMES.get(this.code);
    }

    /** The status message (rpc-message), "" when absent. */
    public String details() {
        return this.details;
    }

    /** Trailing metadata (rpc-tm-KEY headers) as (KEY, raw value) pairs, in order. */
    public List<Map.Entry<String, byte[]>> trailers() {
        return this.trailers;
    }

    /** The serialized google.rpc.Status of a rich error (trailer grpc-status-details-bin), or null. */
    public byte[] statusDetails() {
        byte[] found = null;
        for (Map.Entry<String, byte[]> entry : this.trailers) {
            if (entry.getKey().equals("grpc-status-details-bin")) {
                found = entry.getValue();
            }
        }
        return found;
    }
}
