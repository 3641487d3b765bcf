package interop;

import com.google.protobuf.CodedInputStream;
import com.google.protobuf.CodedOutputStream;
import com.google.protobuf.WireFormat;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;

/**
 * The few protobuf messages the interop programs use, encoded and decoded by hand with
 * protobuf-java's CodedOutputStream/CodedInputStream (no protoc, no generated code).
 * Field numbers are those of protos/rpctest/v1/kitchen.proto and tests/interop/protos/interop/v1/shout.proto.
 */
final class Proto {

    private Proto() {
    }

    /** rpctest.v1.KeyedRequest { string customer = 1; int32 seq = 2; } */
    static byte[] keyedRequest(String customer, int seq) {
        return encode(out -> {
            out.writeString(1, customer);
            if (seq != 0) {
                out.writeInt32(2, seq);
            }
        });
    }

    /** rpctest.v1.WhoamiReply { int32 pid = 1; string peer = 2; } */
    record Whoami(int pid, String peer) {
        static Whoami decode(byte[] value) {
            int pid = 0;
            String peer = "";
            CodedInputStream in = CodedInputStream.newInstance(value);
            for (int tag = readTag(in); tag != 0; tag = readTag(in)) {
                switch (WireFormat.getTagFieldNumber(tag)) {
                    case 1 -> pid = call(in::readInt32);
                    case 2 -> peer = call(in::readString);
                    default -> skip(in, tag);
                }
            }
            return new Whoami(pid, peer);
        }
    }

    /**
     * Part of rpctest.v1.Everything: { repeated string tags = 5; string text = 8 (oneof choice);
     * int64 number = 9 (oneof choice); bytes blob = 17; }. The oneof holds one of text/number.
     */
    record Everything(List<String> tags, String text, long number, byte[] blob) {
        byte[] encode() {
            return Proto.encode(out -> {
                for (String tag : tags) {
                    out.writeString(5, tag);
                }
                if (text != null) {
                    out.writeString(8, text);
                } else {
                    out.writeInt64(9, number);
                }
                if (blob.length > 0) {
                    out.writeByteArray(17, blob);
                }
            });
        }

        static Everything decode(byte[] value) {
            List<String> tags = new ArrayList<>();
            String text = null;
            long number = 0;
            byte[] blob = new byte[0];
            CodedInputStream in = CodedInputStream.newInstance(value);
            for (int tag = readTag(in); tag != 0; tag = readTag(in)) {
                switch (WireFormat.getTagFieldNumber(tag)) {
                    case 5 -> tags.add(call(in::readString));
                    case 8 -> text = call(in::readString);
                    case 9 -> number = call(in::readInt64);
                    case 17 -> blob = call(in::readByteArray);
                    default -> skip(in, tag);
                }
            }
            return new Everything(tags, text, number, blob);
        }
    }

    /** rpctest.v1.FailRequest { Mode mode = 1; int32 code = 2; string message = 3; } (ABORT 0, RAISE 2, RICH 3) */
    static byte[] failRequest(int mode, int code, String message) {
        return encode(out -> {
            if (mode != 0) {
                out.writeEnum(1, mode);
            }
            if (code != 0) {
                out.writeInt32(2, code);
            }
            out.writeString(3, message);
        });
    }

    /** interop.v1.Text { string text = 1; } */
    static String text(byte[] value) {
        String text = "";
        CodedInputStream in = CodedInputStream.newInstance(value == null ? new byte[0] : value);
        for (int tag = readTag(in); tag != 0; tag = readTag(in)) {
            if (WireFormat.getTagFieldNumber(tag) == 1) {
                text = call(in::readString);
            } else {
                skip(in, tag);
            }
        }
        return text;
    }

    /** interop.v1.Shouted { string text = 1; repeated string request_headers = 2; } */
    static byte[] shouted(String text, List<String> requestHeaders) {
        return encode(out -> {
            out.writeString(1, text);
            for (String name : requestHeaders) {
                out.writeString(2, name);
            }
        });
    }

    // Plumbing: CodedOutputStream/CodedInputStream throw IOException, which cannot happen in memory.

    private interface Writer {
        void write(CodedOutputStream out) throws IOException;
    }

    private interface Reader<T> {
        T read() throws IOException;
    }

    static byte[] encode(Writer writer) {
        try {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            CodedOutputStream out = CodedOutputStream.newInstance(bytes);
            writer.write(out);
            out.flush();
            return bytes.toByteArray();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static <T> T call(Reader<T> reader) {
        try {
            return reader.read();
        } catch (IOException e) {
            throw new IllegalArgumentException("not a valid protobuf message: " + e.getMessage(), e);
        }
    }

    private static int readTag(CodedInputStream in) {
        return call(in::readTag);
    }

    private static void skip(CodedInputStream in, int tag) {
        call(() -> in.skipField(tag));
    }
}
