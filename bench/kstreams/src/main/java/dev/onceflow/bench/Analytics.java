package dev.onceflow.bench;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.text.Normalizer;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericArray;
import org.apache.avro.generic.GenericRecord;

/**
 * The parts of onceflow that contender (e) repeats per record, written again in Java from what the
 * Rust code does (src/model/identity.rs, src/model/event.rs, src/adapters/analytics.rs,
 * src/model/headers.rs): the entity key, the command id, the analytics adapter's properties, and
 * the traceparent of the next hop.
 *
 * <p>Not thread-safe (it keeps its message digests): one instance per Streams processor.
 * {@link #selfTest()} checks it against values pinned by onceflow's own unit tests.
 */
final class Analytics {
    /** onceflow's UUIDv5 namespace of event ids (identity.rs, EVENT_NAMESPACE). */
    static final UUID EVENT_NAMESPACE = UUID.fromString("5b0c6f3e-9a41-4f7d-8d2e-61c40f1ab7e2");
    /** onceflow's UUIDv5 namespace of command ids (identity.rs, COMMAND_NAMESPACE). */
    static final UUID COMMAND_NAMESPACE = UUID.fromString("0e7d29a4-c35b-4b8e-a1f6-93d257e84c10");
    /** The adapter's name: part of the command id, the command's meta and the DLQ envelope. */
    static final String ADAPTER = "analytics";

    /** The event types onceflow knows, by the simple name of their Avro record. */
    static final List<String> EVENT_TYPES =
        List.of("LeadCaptured", "ContentPublished", "CampaignTriggered", "InvoiceRequested");

    private static final HexFormat HEX = HexFormat.of();

    private final MessageDigest sha1;
    private final MessageDigest sha256;

    Analytics() {
        try {
            sha1 = MessageDigest.getInstance("SHA-1");
            sha256 = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A record that is decodable but does not fit what the adapter expects (onceflow's
     *  FieldError): dead-lettered with the class {@code schema} or {@code permanent}. */
    static final class Rejected extends Exception {
        private static final long serialVersionUID = 1L;

        Rejected(String message) {
            super(message, null, false, false);
        }
    }

    /** The fields the analytics adapter may send as properties, per event type (never e-mail,
     *  names or phone): analytics.rs, property_fields. */
    static List<String> propertyFields(String eventType) {
        return switch (eventType) {
            case "LeadCaptured" -> List.of("form_id", "company", "consent_marketing", "utm_campaign");
            case "ContentPublished" -> List.of("content_id", "locale", "tags");
            case "CampaignTriggered" -> List.of("campaign_id", "template_id");
            case "InvoiceRequested" -> List.of("currency", "amount_minor");
            default -> List.of();
        };
    }

    /**
     * The track call's properties: each allowed field present in the record, as a string
     * (analytics.rs, as_property: null is left out, a string is itself, an array is its items
     * joined with commas, anything else its JSON text, e.g. {@code true} or {@code 1999}).
     */
    static Map<String, String> properties(String eventType, GenericRecord event) {
        Map<String, String> out = new LinkedHashMap<>();
        for (String f : propertyFields(eventType)) {
            Schema.Field field = event.getSchema().getField(f);
            if (field == null) {
                continue;
            }
            String v = asProperty(event.get(field.pos()));
            if (v != null) {
                out.put(f, v);
            }
        }
        return out;
    }

    private static String asProperty(Object v) {
        if (v == null) {
            return null;
        }
        if (v instanceof CharSequence s) {
            return s.toString();
        }
        if (v instanceof GenericArray<?> || v instanceof List<?>) {
            StringBuilder b = new StringBuilder();
            for (Object item : (List<?>) v) {
                String s = asProperty(item);
                if (s == null) {
                    continue;
                }
                if (b.length() > 0) {
                    b.append(',');
                }
                b.append(s);
            }
            return b.toString();
        }
        // Booleans and numbers: their JSON text, as serde_json prints them.
        return v.toString();
    }

    /** The entity key of an event (event.rs, entity_key): the e-mail key of a person, else the
     *  content or customer id. It is the command's user key and its record key. */
    String entityKey(String eventType, GenericRecord event) throws Rejected {
        return switch (eventType) {
            case "LeadCaptured" -> emailKey(stringField(event, "email"));
            case "CampaignTriggered" -> emailKey(stringField(event, "recipient_email"));
            case "ContentPublished" -> stringField(event, "content_id");
            case "InvoiceRequested" -> stringField(event, "customer_id");
            default -> throw new Rejected("unknown event type " + eventType);
        };
    }

    private static String stringField(GenericRecord event, String name) throws Rejected {
        Schema.Field field = event.getSchema().getField(name);
        Object v = field == null ? null : event.get(field.pos());
        if (!(v instanceof CharSequence s)) {
            throw new Rejected("data." + name + ": is required and must be a string");
        }
        return s.toString();
    }

    /** identity.rs, normalize_email: NFKC, trimmed of Unicode white space, lowercased. */
    static String normalizeEmail(String email) {
        String s = Normalizer.normalize(email, Normalizer.Form.NFKC);
        int start = 0;
        int end = s.length();
        while (start < end && isWhiteSpace(s.charAt(start))) {
            start++;
        }
        while (end > start && isWhiteSpace(s.charAt(end - 1))) {
            end--;
        }
        return s.substring(start, end).toLowerCase(Locale.ROOT);
    }

    /**
     * Unicode's White_Space property, which Rust's {@code str::trim} uses (Java's
     * {@code Character.isWhitespace} differs: it leaves out U+0085 and the no-break spaces and takes
     * U+001C..U+001F). Every White_Space character is in the BMP.
     */
    static boolean isWhiteSpace(char c) {
        return (c >= '\u0009' && c <= '\r') || c == ' ' || c == '\u0085' || c == '\u00a0'
            || c == '\u1680' || (c >= '\u2000' && c <= '\u200a') || c == '\u2028' || c == '\u2029'
            || c == '\u202f' || c == '\u205f' || c == '\u3000';
    }

    /** identity.rs, email_key: hex SHA-256 of the normalised address. */
    String emailKey(String email) {
        return HEX.formatHex(sha256.digest(normalizeEmail(email).getBytes(StandardCharsets.UTF_8)));
    }

    /** identity.rs, command_id: UUIDv5 of (event id, adapter, index), NUL-separated. */
    String commandId(String eventId, int index) {
        return uuidV5(COMMAND_NAMESPACE, eventId + '\0' + ADAPTER + '\0' + index);
    }

    /** A name-based UUID, version 5 (SHA-1), as RFC 9562 defines it; lower-case hyphenated. */
    String uuidV5(UUID namespace, String name) {
        ByteBuffer ns = ByteBuffer.allocate(16);
        ns.putLong(namespace.getMostSignificantBits()).putLong(namespace.getLeastSignificantBits());
        sha1.update(ns.array());
        byte[] h = sha1.digest(name.getBytes(StandardCharsets.UTF_8));
        h[6] = (byte) ((h[6] & 0x0f) | 0x50);
        h[8] = (byte) ((h[8] & 0x3f) | 0x80);
        ByteBuffer b = ByteBuffer.wrap(h, 0, 16);
        return new UUID(b.getLong(), b.getLong()).toString();
    }

    /**
     * The dedupe store's key of an event id: a canonical (lower-case, hyphenated) UUID as its 16
     * bytes, as onceflow's store holds it (dedupe/slices.rs); any other id as its UTF-8 bytes
     * followed by 0xFF (a byte UTF-8 never has), and once more 0xFF should that make 16 bytes, so no
     * text key ever equals a UUID key or another text key.
     */
    static byte[] dedupeKey(String id) {
        if (isCanonicalUuid(id)) {
            UUID u = UUID.fromString(id);
            return ByteBuffer.allocate(16)
                .putLong(u.getMostSignificantBits()).putLong(u.getLeastSignificantBits()).array();
        }
        byte[] text = id.getBytes(StandardCharsets.UTF_8);
        int pad = text.length + 1 == 16 ? 2 : 1;
        byte[] key = new byte[text.length + pad];
        System.arraycopy(text, 0, key, 0, text.length);
        for (int i = text.length; i < key.length; i++) {
            key[i] = (byte) 0xff;
        }
        return key;
    }

    static boolean isCanonicalUuid(String s) {
        if (s.length() != 36) {
            return false;
        }
        for (int i = 0; i < 36; i++) {
            char c = s.charAt(i);
            boolean ok = (i == 8 || i == 13 || i == 18 || i == 23)
                ? c == '-'
                : (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
            if (!ok) {
                return false;
            }
        }
        return true;
    }

    /**
     * headers.rs, continue_trace: the traceparent of the next hop: the inherited trace id and flags
     * with a new span id, or a new trace when the inherited one is missing or not a version-00 one.
     */
    static String continueTrace(String inherited) {
        ThreadLocalRandom r = ThreadLocalRandom.current();
        String span = HEX.toHexDigits(r.nextLong());
        if (inherited != null) {
            String[] parts = inherited.trim().split("-", -1);
            if (parts.length >= 4 && parts[0].equals("00") && isHex(parts[1], 32) && isHex(parts[3], 2)
                    && !parts[1].equals("0".repeat(32))) {
                return "00-" + parts[1].toLowerCase(Locale.ROOT) + "-" + span + "-" + parts[3];
            }
        }
        return "00-" + HEX.toHexDigits(r.nextLong()) + HEX.toHexDigits(r.nextLong()) + "-" + span + "-01";
    }

    private static boolean isHex(String s, int n) {
        if (s.length() != n) {
            return false;
        }
        for (int i = 0; i < n; i++) {
            if (Character.digit(s.charAt(i), 16) < 0) {
                return false;
            }
        }
        return true;
    }

    /** Checks this class against values onceflow's unit tests pin (identity.rs); throws if one
     *  differs. */
    static void selfTest() {
        Analytics a = new Analytics();
        check(normalizeEmail("  Ada@Example.COM \t"), "ada@example.com");
        check(normalizeEmail("Jos\u0065\u0301@example.com"), normalizeEmail("Jos\u00e9@example.com"));
        check(normalizeEmail("\uff21\uff24\uff21\uff20example.com"), "ada@example.com");
        check(normalizeEmail("\u00a0ada@example.com\u3000"), "ada@example.com");
        check(normalizeEmail("STRA\u1e9eE@example.de"), "stra\u00dfe@example.de");
        check(a.emailKey(" ADA@example.com"), "b5fc85e55755f9e0d030a10ab4429b6b2944855f9a0d60077fe832becbc41d72");
        check(a.uuidV5(EVENT_NAMESPACE, "demo\0lead-1"), "5299580b-3518-53a2-ada8-9caa3a5c9a5c");
        check(String.valueOf(dedupeKey("5299580b-3518-53a2-ada8-9caa3a5c9a5c").length), "16");
        check(String.valueOf(dedupeKey("5299580B-3518-53A2-ADA8-9CAA3A5C9A5C").length), "37");
        check(String.valueOf(dedupeKey("fifteen-bytes!!").length), "17");
        String t = continueTrace("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        check(t.substring(0, 36), "00-0af7651916cd43dd8448eb211c80319c-");
        check(String.valueOf(continueTrace(null).length()), "55");
    }

    private static void check(String got, String want) {
        if (!got.equals(want)) {
            throw new IllegalStateException("self-test: got " + got + ", want " + want);
        }
    }
}
