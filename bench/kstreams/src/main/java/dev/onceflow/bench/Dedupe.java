package dev.onceflow.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.atomic.LongAdder;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.Metric;
import org.apache.kafka.common.MetricName;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.ProcessorSupplier;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * Contender (e) of the processor benchmark: Kafka Streams, {@code exactly_once_v2}, doing per record
 * what {@code onceflow process --adapter analytics} does (src/processor/mod.rs).
 *
 * <pre>
 *   source(input) -> decide [store "dedupe": persistent KeyValueStore, RocksDB, changelog on]
 *                      -> sink "commands"     (output)
 *                      -> sink "dead-letters" (dead-letter topic)
 * </pre>
 *
 * For each record, in onceflow's order:
 * <ol>
 *   <li>the Confluent wire format (magic byte 0, 4-byte big-endian schema id); the writer schema is
 *       asked from the registry once per id ({@link Registry}) and the datum decoded with Avro's
 *       {@code GenericDatumReader}; bytes left over after the record are an error;</li>
 *   <li>the record must be one of onceflow's event types, with a {@code meta} whose {@code type}
 *       agrees;</li>
 *   <li>dedupe: the event id's key ({@link Analytics#dedupeKey}) looked up in the store; an entry
 *       younger than the TTL (7 days, onceflow's default) drops the record;</li>
 *   <li>the analytics adapter's decision: one {@code io.onceflow.commands.AnalyticsTrack} with
 *       the entity key as user key (SHA-256 hex of the normalised e-mail for a lead), the allowed
 *       properties, the event's {@code occurred_at}; its {@code meta} with the command id (UUIDv5
 *       of event id, adapter, index), event id, correlation id, adapter, event type, now;</li>
 *   <li>encoded as Avro in the wire format with the schema id registered at start, under
 *       onceflow's subject for it ({@code <output>-io.onceflow.commands.AnalyticsTrack}, the
 *       TopicRecordNameStrategy), keyed by the entity key, with onceflow's command headers (the
 *       event's hop count, a traceparent continuing the event's trace, the event's
 *       received_at);</li>
 *   <li>{@code put(key, now as 8 bytes)} into the store: one changelog record, in the same
 *       transaction as the command and the input offset.</li>
 * </ol>
 * A record that cannot be decoded, is not an event, or that the adapter rejects goes to the
 * dead-letter topic unchanged with onceflow's error envelope headers, and is not remembered as
 * seen. An unreachable registry is retried, then stops the application (never a dead letter).
 *
 * <p>Prints {@code registered <subject> <id>}, {@code running <epoch-ms>} the first time the client
 * reaches RUNNING, and on close {@code processed: N decided, N duplicates, N dead-lettered} (what
 * the processors handled, any records redone after an aborted transaction counted again) and
 * {@code closed <epoch-ms>}.
 */
public final class Dedupe {
    private Dedupe() {}

    static final String STORE = "dedupe";
    private static final String SOURCE = "events";
    private static final String PROCESSOR = "decide";
    private static final String SINK_COMMANDS = "commands";
    private static final String SINK_DEAD = "dead-letters";
    /** onceflow's default dedupe TTL (config/stage.rs, dedupe_ttl_ms). */
    private static final long TTL_MS = 7L * 24 * 3600 * 1000;

    static final LongAdder DECIDED = new LongAdder();
    static final LongAdder DUPLICATES = new LongAdder();
    static final LongAdder DEAD_LETTERED = new LongAdder();

    private static void usage() {
        System.out.println(String.join("\n",
            "usage: java -cp onceflow-bench-kstreams.jar dev.onceflow.bench.Dedupe --bootstrap HOST:PORT",
            "                 --application-id ID --input TOPIC --output TOPIC --dead-letter TOPIC",
            "                 [--registry http://127.0.0.1:8081] [--commit-interval-ms 100] [--threads 1]",
            "                 [--store rocksdb|memory]   (default rocksdb; memory: to see what RocksDB costs)",
            "       java -cp onceflow-bench-kstreams.jar dev.onceflow.bench.Dedupe --self-test",
            "",
            "Kafka Streams, processing.guarantee=exactly_once_v2, doing onceflow's analytics processor's",
            "work per record: decode Avro (Confluent wire format, schema from the registry), dedupe by",
            "event id in a persistent (RocksDB, changelogged) store, decide one AnalyticsTrack command,",
            "encode it as Avro; undecodable records to the dead-letter topic. Runs until SIGTERM or Ctrl-C."));
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> o = EosApp.options(args, Set.of("--bootstrap", "--registry", "--application-id",
            "--input", "--output", "--dead-letter", "--commit-interval-ms", "--threads", "--store"),
            Set.of("--self-test"), Dedupe::usage);
        if (o.containsKey("--self-test")) {
            Analytics.selfTest();
            loadCommandSchema();
            System.out.println("self-test passed");
            return;
        }
        String bootstrap = o.getOrDefault("--bootstrap", "127.0.0.1:9092");
        String registryUrl = o.getOrDefault("--registry", "http://127.0.0.1:8081");
        String applicationId = o.get("--application-id");
        String input = o.get("--input");
        String output = o.get("--output");
        String deadLetter = o.get("--dead-letter");
        String commitIntervalMs = o.getOrDefault("--commit-interval-ms", "100");
        String threads = o.getOrDefault("--threads", "1");
        String store = o.getOrDefault("--store", "rocksdb");
        if (!store.equals("rocksdb") && !store.equals("memory")) {
            System.err.println("--store is rocksdb or memory");
            System.exit(2);
        }
        boolean inMemory = store.equals("memory");
        if (applicationId == null || input == null || output == null || deadLetter == null) {
            usage();
            System.exit(2);
        }

        // The Java copies of onceflow's identities must give onceflow's values.
        Analytics.selfTest();
        Schema track = loadCommandSchema();
        Registry registry = new Registry(registryUrl);
        String subject = output + "-" + track.getFullName();
        int trackId;
        try {
            trackId = registry.register(subject, track);
        } catch (RuntimeException e) {
            System.err.println("dedupe: " + e.getMessage());
            System.exit(1);
            return;
        }
        System.out.println("registered " + subject + " " + trackId);
        System.out.flush();

        Path stateDir = Files.createTempDirectory("onceflow-bench-kstreams-dedupe-");

        Properties props = EosApp.settings(applicationId, bootstrap, commitIntervalMs, threads, stateDir);

        Topology topology = new Topology();
        topology.addSource(SOURCE, Serdes.ByteArray().deserializer(), Serdes.ByteArray().deserializer(), input);
        topology.addProcessor(PROCESSOR, new DecideSupplier(registry, track, trackId, inMemory), SOURCE);
        topology.addSink(SINK_COMMANDS, output, Serdes.ByteArray().serializer(), Serdes.ByteArray().serializer(),
            PROCESSOR);
        topology.addSink(SINK_DEAD, deadLetter, Serdes.ByteArray().serializer(), Serdes.ByteArray().serializer(),
            PROCESSOR);

        EosApp.run("dedupe", topology, props, stateDir, Dedupe::printThreadMetrics, Dedupe::printSummary);
    }

    /** Where the stream threads' time went (Streams' own thread metrics, to stderr): the share of
     *  each loop phase and the mean commit. */
    private static void printThreadMetrics(KafkaStreams streams) {
        List<String> names = List.of("poll-ratio", "process-ratio", "commit-ratio", "punctuate-ratio",
            "commit-latency-avg", "commit-total", "process-total");
        Map<String, StringBuilder> byThread = new java.util.TreeMap<>();
        for (Map.Entry<MetricName, ? extends Metric> e : streams.metrics().entrySet()) {
            MetricName n = e.getKey();
            if (!n.group().equals("stream-thread-metrics") || !names.contains(n.name())) {
                continue;
            }
            Object v = e.getValue().metricValue();
            String text = v instanceof Double d ? String.format(java.util.Locale.ROOT, "%.3f", d) : String.valueOf(v);
            byThread.computeIfAbsent(n.tags().getOrDefault("thread-id", "?"), k -> new StringBuilder())
                .append(' ').append(n.name()).append('=').append(text);
        }
        byThread.forEach((thread, b) -> System.err.println("[dedupe] " + thread + ":" + b));
    }

    private static void printSummary() {
        System.out.printf("processed: %d decided, %d duplicates, %d dead-lettered%n",
            DECIDED.sum(), DUPLICATES.sum(), DEAD_LETTERED.sum());
    }

    /**
     * The command's schema, self-contained: command_meta.v1.avsc and analytics_track.v1.avsc from
     * the repository's schemas/ (packed into the jar), parsed by one parser so the track record's
     * reference to {@code io.onceflow.CommandMeta} resolves; its text has the meta record inline,
     * as onceflow's catalog registers it.
     */
    static Schema loadCommandSchema() throws IOException {
        Schema.Parser parser = new Schema.Parser();
        parser.parse(resource("schemas/command_meta.v1.avsc"));
        Schema track = parser.parse(resource("schemas/analytics_track.v1.avsc"));
        // Parse the text once more on its own: what the registry is sent must stand alone.
        return new Schema.Parser().parse(track.toString());
    }

    private static String resource(String name) throws IOException {
        try (InputStream in = Dedupe.class.getClassLoader().getResourceAsStream(name)) {
            if (in == null) {
                throw new IOException(name + " is not in the jar (built without ../../schemas?)");
            }
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
    }

    /** Makes one {@link Decide} per task and connects the dedupe store to it. */
    private static final class DecideSupplier implements ProcessorSupplier<byte[], byte[], byte[], byte[]> {
        private final Registry registry;
        private final Schema track;
        private final int trackId;
        private final boolean inMemory;

        DecideSupplier(Registry registry, Schema track, int trackId, boolean inMemory) {
            this.registry = registry;
            this.track = track;
            this.trackId = trackId;
            this.inMemory = inMemory;
        }

        @Override
        public Processor<byte[], byte[], byte[], byte[]> get() {
            return new Decide(registry, track, trackId);
        }

        @Override
        public Set<StoreBuilder<?>> stores() {
            // Persistent (RocksDB), changelog enabled (the builder's default: a compacted
            // <application.id>-dedupe-changelog topic written in the task's transaction), no
            // record cache (the builder's default: every put reaches RocksDB and the changelog).
            // --store memory (not what the benchmark runs): Streams' in-memory store, changelogged
            // alike, to see what RocksDB costs.
            StoreBuilder<KeyValueStore<Bytes, byte[]>> store = Stores.keyValueStoreBuilder(
                inMemory ? Stores.inMemoryKeyValueStore(STORE) : Stores.persistentKeyValueStore(STORE),
                Serdes.Bytes(), Serdes.ByteArray());
            return Set.of(store);
        }
    }

    /** onceflow's error classes (model/headers.rs, ErrorClass). */
    private enum ErrorClass {
        DECODE("decode"), SCHEMA("schema"), PERMANENT("permanent");

        final String header;

        ErrorClass(String header) {
            this.header = header;
        }
    }

    /** The onceflow header names this contender reads or writes (model/headers.rs). */
    private static final String HOP = "onceflow.hop";
    private static final String TRACEPARENT = "traceparent";
    private static final String EVENT_RECEIVED_AT = "onceflow.event.received_at";
    private static final List<String> ENVELOPE = List.of("onceflow.error.class", "onceflow.error.message",
        "onceflow.attempt", "onceflow.first_failed_at", "onceflow.not_before", "onceflow.origin.topic",
        "onceflow.origin.partition", "onceflow.origin.offset", "onceflow.adapter", "onceflow.stage",
        "onceflow.correlation_id", "onceflow.error.http_status");
    private static final int MAX_MESSAGE_BYTES = 1024;

    /** The per-record work, one instance per task (so nothing in it is shared across threads but
     *  the registry's cache). */
    private static final class Decide implements Processor<byte[], byte[], byte[], byte[]> {
        private final Registry registry;
        private final Schema track;
        private final Schema meta;
        private final byte[] header;
        private final Analytics analytics = new Analytics();
        private final Map<Integer, GenericDatumReader<GenericRecord>> readers = new HashMap<>();
        private final GenericDatumWriter<GenericRecord> writer;
        private BinaryDecoder decoder;
        private BinaryEncoder encoder;
        private ProcessorContext<byte[], byte[]> context;
        private KeyValueStore<Bytes, byte[]> store;

        Decide(Registry registry, Schema track, int trackId) {
            this.registry = registry;
            this.track = track;
            this.meta = track.getField("meta").schema();
            this.header = ByteBuffer.allocate(5).put((byte) 0).putInt(trackId).array();
            this.writer = new GenericDatumWriter<>(track);
        }

        @Override
        public void init(ProcessorContext<byte[], byte[]> context) {
            this.context = context;
            this.store = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            byte[] bytes = record.value();
            if (bytes == null) {
                deadLetter(record, ErrorClass.DECODE, "record has no value", null);
                return;
            }
            if (bytes.length < 5 || bytes[0] != 0) {
                deadLetter(record, ErrorClass.DECODE, "decode: not Confluent wire format (" + bytes.length
                    + " bytes, first byte " + (bytes.length == 0 ? "none" : Byte.toUnsignedInt(bytes[0])) + ")",
                    null);
                return;
            }
            int id = ByteBuffer.wrap(bytes, 1, 4).getInt();
            // An unreachable registry throws out of here (after its retries): the task fails and
            // the application stops; the record is not a dead letter.
            Registry.Writer w = registry.writer(id);
            if (w.schema() == null) {
                deadLetter(record, ErrorClass.DECODE, "decode: " + w.error(), null);
                return;
            }
            GenericRecord event;
            try {
                GenericDatumReader<GenericRecord> reader =
                    readers.computeIfAbsent(id, k -> new GenericDatumReader<>(w.schema()));
                decoder = DecoderFactory.get().binaryDecoder(bytes, 5, bytes.length - 5, decoder);
                Object value = reader.read(null, decoder);
                if (!decoder.isEnd()) {
                    deadLetter(record, ErrorClass.DECODE, "decode: schema id " + id
                        + ": trailing bytes after the record", null);
                    return;
                }
                if (!(value instanceof GenericRecord r)) {
                    deadLetter(record, ErrorClass.SCHEMA, "an unnamed schema is not an event type this stage reads",
                        null);
                    return;
                }
                event = r;
            } catch (IOException | RuntimeException e) {
                deadLetter(record, ErrorClass.DECODE, "decode: schema id " + id
                    + ": truncated or corrupt: the bytes do not hold a whole record of the writer schema ("
                    + e + ")", null);
                return;
            }

            String fullName = event.getSchema().getFullName();
            String type = fullName.substring(fullName.lastIndexOf('.') + 1);
            if (!Analytics.EVENT_TYPES.contains(type)) {
                deadLetter(record, ErrorClass.SCHEMA, fullName + " is not an event type this stage reads", null);
                return;
            }
            Object m = field(event, "meta");
            if (!(m instanceof GenericRecord em)) {
                deadLetter(record, ErrorClass.SCHEMA, "meta: is required and must be a record", null);
                return;
            }
            String eventId = text(em, "event_id");
            String metaType = text(em, "type");
            String correlationId = text(em, "correlation_id");
            Object occurredAt = field(em, "occurred_at");
            Object receivedAt = field(em, "received_at");
            if (eventId == null || metaType == null || correlationId == null
                    || !(occurredAt instanceof Long) || !(receivedAt instanceof Long)) {
                deadLetter(record, ErrorClass.SCHEMA, "meta: event_id, type, correlation_id, occurred_at and "
                    + "received_at are required", null);
                return;
            }
            if (!metaType.equals(type)) {
                deadLetter(record, ErrorClass.SCHEMA, "record " + type + " says its type is " + metaType,
                    correlationId);
                return;
            }

            long now = System.currentTimeMillis();
            Bytes key = Bytes.wrap(Analytics.dedupeKey(eventId));
            byte[] seen = store.get(key);
            if (seen != null && seen.length == 8 && ByteBuffer.wrap(seen).getLong() + TTL_MS > now) {
                DUPLICATES.increment();
                return;
            }

            // The analytics adapter's decision: one track call.
            String userKey;
            byte[] payload;
            try {
                userKey = analytics.entityKey(type, event);
                GenericRecord cm = new GenericData.Record(meta);
                cm.put("command_id", analytics.commandId(eventId, 0));
                cm.put("event_id", eventId);
                cm.put("correlation_id", correlationId);
                cm.put("adapter", Analytics.ADAPTER);
                cm.put("event_type", metaType);
                cm.put("created_at", now);
                GenericRecord command = new GenericData.Record(track);
                command.put("meta", cm);
                command.put("event_name", type);
                command.put("user_key", userKey);
                command.put("properties", Analytics.properties(type, event));
                command.put("timestamp", occurredAt);
                payload = encode(command);
            } catch (Analytics.Rejected e) {
                deadLetter(record, ErrorClass.PERMANENT, e.getMessage(), correlationId);
                return;
            } catch (IOException | RuntimeException e) {
                deadLetter(record, ErrorClass.PERMANENT, "AnalyticsTrack: " + e, correlationId);
                return;
            }

            // onceflow's command headers: the event's hop count, the next hop's traceparent, and
            // when the event was received.
            Headers headers = new RecordHeaders();
            String parent = null;
            for (Header h : record.headers()) {
                if (h.key().equals(HOP)) {
                    headers.add(h);
                } else if (h.key().equals(TRACEPARENT) && h.value() != null) {
                    parent = new String(h.value(), StandardCharsets.UTF_8);
                }
            }
            headers.add(TRACEPARENT, Analytics.continueTrace(parent).getBytes(StandardCharsets.UTF_8));
            headers.add(EVENT_RECEIVED_AT, receivedAt.toString().getBytes(StandardCharsets.UTF_8));

            context.forward(new Record<>(userKey.getBytes(StandardCharsets.UTF_8), payload, record.timestamp(),
                headers), SINK_COMMANDS);
            store.put(key, ByteBuffer.allocate(8).putLong(now).array());
            DECIDED.increment();
        }

        private byte[] encode(GenericRecord command) throws IOException {
            ByteArrayOutputStream out = new ByteArrayOutputStream(256);
            out.write(header);
            encoder = EncoderFactory.get().directBinaryEncoder(out, encoder);
            writer.write(command, encoder);
            encoder.flush();
            return out.toByteArray();
        }

        private static Object field(GenericRecord r, String name) {
            Schema.Field f = r.getSchema().getField(name);
            return f == null ? null : r.get(f.pos());
        }

        private static String text(GenericRecord r, String name) {
            return field(r, name) instanceof CharSequence s ? s.toString() : null;
        }

        /** The record, unchanged, to the dead-letter topic with onceflow's error envelope (its
         *  own headers kept, any earlier envelope replaced). */
        private void deadLetter(Record<byte[], byte[]> record, ErrorClass cls, String message, String correlationId) {
            Headers headers = new RecordHeaders();
            for (Header h : record.headers()) {
                if (!ENVELOPE.contains(h.key())) {
                    headers.add(h);
                }
            }
            Optional<RecordMetadata> origin = context.recordMetadata();
            String now = Long.toString(System.currentTimeMillis());
            add(headers, "onceflow.error.class", cls.header);
            add(headers, "onceflow.error.message", truncate(message));
            add(headers, "onceflow.attempt", "1");
            add(headers, "onceflow.first_failed_at", now);
            add(headers, "onceflow.not_before", "0");
            add(headers, "onceflow.origin.topic", origin.map(RecordMetadata::topic).orElse(""));
            add(headers, "onceflow.origin.partition", origin.map(o -> Integer.toString(o.partition())).orElse("-1"));
            add(headers, "onceflow.origin.offset", origin.map(o -> Long.toString(o.offset())).orElse("-1"));
            add(headers, "onceflow.adapter", Analytics.ADAPTER);
            add(headers, "onceflow.stage", "process");
            if (correlationId != null) {
                add(headers, "onceflow.correlation_id", correlationId);
            }
            context.forward(record.withHeaders(headers), SINK_DEAD);
            DEAD_LETTERED.increment();
        }

        private static void add(Headers headers, String key, String value) {
            headers.add(key, value.getBytes(StandardCharsets.UTF_8));
        }

        private static String truncate(String message) {
            if (message.getBytes(StandardCharsets.UTF_8).length <= MAX_MESSAGE_BYTES) {
                return message;
            }
            int end = Math.min(message.length(), MAX_MESSAGE_BYTES);
            while (end > 0 && message.substring(0, end).getBytes(StandardCharsets.UTF_8).length > MAX_MESSAGE_BYTES) {
                end--;
            }
            if (end > 0 && Character.isHighSurrogate(message.charAt(end - 1))) {
                end--;
            }
            return message.substring(0, end);
        }
    }
}
