package dev.onceflow.bench;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

/**
 * Contender (c) of the processor benchmark: the smallest Kafka Streams application that does what
 * the onceflow processor's transaction does at the Kafka level, and nothing else.
 *
 * <pre>
 *   source(input, ByteArray/ByteArray) -> sink(output, ByteArray/ByteArray)
 * </pre>
 *
 * <ul>
 *   <li>{@code processing.guarantee=exactly_once_v2}: one transactional producer per stream thread,
 *       outputs and input offsets committed in one transaction every commit interval;</li>
 *   <li>{@code commit.interval.ms} (default 100, the same as onceflow's {@code batch_max_ms});</li>
 *   <li>{@code num.stream.threads=1}: one thread runs every task (one task per input partition);</li>
 *   <li>the state directory is a fresh temporary folder, deleted on exit (a pass-through has no
 *       state store, Streams still wants the folder);</li>
 *   <li>SIGTERM (or Ctrl-C) runs a shutdown hook that closes the streams (committing what is in
 *       flight), leaves the consumer group and removes the temporary folder; the JVM then exits
 *       with 143 as usual.</li>
 * </ul>
 *
 * Prints {@code running <epoch-ms>} on stdout the first time the client reaches RUNNING, and
 * {@code closed <epoch-ms>} when the hook has closed it.
 */
public final class PassThrough {
    private PassThrough() {}

    private static void usage() {
        System.out.println(String.join("\n",
            "usage: java -jar onceflow-bench-kstreams.jar --bootstrap HOST:PORT --application-id ID",
            "                 --input TOPIC --output TOPIC [--commit-interval-ms 100] [--threads 1]",
            "",
            "A Kafka Streams pass-through (bytes in, the same bytes out, key and value),",
            "processing.guarantee=exactly_once_v2. Runs until SIGTERM or Ctrl-C."));
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = "127.0.0.1:9092";
        String applicationId = null;
        String input = null;
        String output = null;
        String commitIntervalMs = "100";
        String threads = "1";
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                usage();
                return;
            }
            if (i + 1 >= args.length) {
                System.err.println("missing value after " + a);
                usage();
                System.exit(2);
            }
            String v = args[++i];
            switch (a) {
                case "--bootstrap" -> bootstrap = v;
                case "--application-id" -> applicationId = v;
                case "--input" -> input = v;
                case "--output" -> output = v;
                case "--commit-interval-ms" -> commitIntervalMs = v;
                case "--threads" -> threads = v;
                default -> {
                    System.err.println("unknown option " + a);
                    usage();
                    System.exit(2);
                }
            }
        }
        if (applicationId == null || input == null || output == null) {
            usage();
            System.exit(2);
        }

        Path stateDir = Files.createTempDirectory("onceflow-bench-kstreams-");

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitIntervalMs);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        // Streams' own default for its consumers, spelled out: a new group starts at the beginning.
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        // No global store here; set only to silence Streams 4.3's start-up warning about it.
        props.put("processing.exception.handler.global.enabled", "true");

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
               .to(output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        Topology topology = builder.build();

        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean announced = new AtomicBoolean(false);
        AtomicBoolean failed = new AtomicBoolean(false);

        streams.setStateListener((now, before) -> {
            if (now == KafkaStreams.State.RUNNING && announced.compareAndSet(false, true)) {
                System.out.println("running " + System.currentTimeMillis());
                System.out.flush();
            }
            if (now == KafkaStreams.State.ERROR) {
                failed.set(true);
                stopped.countDown();
            }
        });
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("pass-through failed: " + e);
            failed.set(true);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        // Leave the group on close (Streams stays in it by default until the session times out), so
        // that the harness can delete the group right after stopping the application.
        CloseOptions close = CloseOptions
            .groupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP)
            .withTimeout(Duration.ofSeconds(30));
        Thread hook = new Thread(() -> {
            streams.close(close);
            streams.cleanUp();
            deleteTree(stateDir);
            System.out.println("closed " + System.currentTimeMillis());
            System.out.flush();
            stopped.countDown();
        }, "pass-through-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        streams.start();
        stopped.await();
        if (failed.get()) {
            // ERROR state: close here (the hook would run only on a signal), then exit non-zero.
            Runtime.getRuntime().removeShutdownHook(hook);
            streams.close(close);
            deleteTree(stateDir);
            System.exit(1);
        }
    }

    private static void deleteTree(Path root) {
        if (!Files.exists(root)) {
            return;
        }
        try (Stream<Path> walk = Files.walk(root)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            });
        } catch (IOException | UncheckedIOException e) {
            System.err.println("could not delete " + root + ": " + e);
        }
    }
}
