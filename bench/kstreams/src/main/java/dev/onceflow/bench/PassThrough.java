package dev.onceflow.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
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
        Map<String, String> o = EosApp.options(args, Set.of("--bootstrap", "--application-id", "--input",
            "--output", "--commit-interval-ms", "--threads"), Set.of(), PassThrough::usage);
        String bootstrap = o.getOrDefault("--bootstrap", "127.0.0.1:9092");
        String applicationId = o.get("--application-id");
        String input = o.get("--input");
        String output = o.get("--output");
        String commitIntervalMs = o.getOrDefault("--commit-interval-ms", "100");
        String threads = o.getOrDefault("--threads", "1");
        if (applicationId == null || input == null || output == null) {
            usage();
            System.exit(2);
        }

        Path stateDir = Files.createTempDirectory("onceflow-bench-kstreams-");

        Properties props = EosApp.settings(applicationId, bootstrap, commitIntervalMs, threads, stateDir);

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
               .to(output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));
        Topology topology = builder.build();

        EosApp.run("pass-through", topology, props, stateDir, streams -> {}, () -> {});
    }
}
