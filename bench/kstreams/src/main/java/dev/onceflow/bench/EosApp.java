package dev.onceflow.bench;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Stream;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * What the two Kafka Streams contenders, {@link PassThrough} (c) and {@link Dedupe} (e), share: the
 * settings they run with and how they run.
 *
 * <ul>
 *   <li>{@code exactly_once_v2}, the given commit interval and stream threads, byte-array serdes, a
 *       new group starting at the beginning, a fresh temporary state directory;</li>
 *   <li>{@code running <epoch-ms>} on stdout the first time the client reaches RUNNING;</li>
 *   <li>a failed stream thread stops the client (ERROR): it is closed and the JVM exits 1;</li>
 *   <li>SIGTERM (or Ctrl-C) runs a shutdown hook that closes the client (committing what is in
 *       flight), leaves the group (Streams otherwise stays in it until the session times out, and
 *       the harness could not delete the group right after the run), removes the state directory
 *       and prints {@code closed <epoch-ms>}; the JVM then exits 143 as usual.</li>
 * </ul>
 */
final class EosApp {
    private EosApp() {}

    /**
     * The command line as option → value: {@code --name value} for each of {@code options},
     * {@code --name} alone (value "true") for each of {@code flags}. {@code -h}/{@code --help}
     * prints {@code usage} and exits 0; an unknown option or a missing value prints it and exits 2.
     */
    static Map<String, String> options(String[] args, Set<String> options, Set<String> flags, Runnable usage) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help")) {
                usage.run();
                System.exit(0);
            }
            if (flags.contains(a)) {
                out.put(a, "true");
                continue;
            }
            if (!options.contains(a)) {
                System.err.println("unknown option " + a);
                usage.run();
                System.exit(2);
            }
            if (i + 1 >= args.length) {
                System.err.println("missing value after " + a);
                usage.run();
                System.exit(2);
            }
            out.put(a, args[++i]);
        }
        return out;
    }

    /** The EOS v2 settings of a contender; the caller adds its own. */
    static Properties settings(String applicationId, String bootstrap, String commitIntervalMs, String threads,
                               Path stateDir) {
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
        return props;
    }

    /**
     * Runs {@code topology} until SIGTERM or a failure, as the class comment says. {@code beforeClose}
     * runs just before the client is closed on SIGTERM (metrics are still readable then);
     * {@code afterClose} after it is closed, on SIGTERM and on failure alike.
     */
    static void run(String name, Topology topology, Properties props, Path stateDir,
                    java.util.function.Consumer<KafkaStreams> beforeClose, Runnable afterClose)
        throws InterruptedException {
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
            System.err.println(name + " failed: " + e);
            failed.set(true);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });

        CloseOptions close = CloseOptions
            .groupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP)
            .withTimeout(Duration.ofSeconds(30));
        Thread hook = new Thread(() -> {
            beforeClose.accept(streams);
            streams.close(close);
            streams.cleanUp();
            deleteTree(stateDir);
            afterClose.run();
            System.out.println("closed " + System.currentTimeMillis());
            System.out.flush();
            stopped.countDown();
        }, name + "-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        streams.start();
        stopped.await();
        if (failed.get()) {
            // ERROR state: close here (the hook would run only on a signal), then exit non-zero.
            Runtime.getRuntime().removeShutdownHook(hook);
            streams.close(close);
            deleteTree(stateDir);
            afterClose.run();
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
