package dev.onceflow.bench;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ExecutionException;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.GroupListing;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RemoveMembersFromConsumerGroupOptions;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.errors.GroupIdNotFoundException;
import org.apache.kafka.common.errors.GroupNotEmptyException;

/**
 * The processor benchmark's admin helper: one small JVM instead of several Kafka tool start-ups,
 * and a lag probe that polls a consumer group's committed offsets against the input's end offsets.
 *
 * <pre>
 *   Probe create-topic BOOTSTRAP TOPIC PARTITIONS
 *   Probe end-offsets  BOOTSTRAP TOPIC                 -> "PARTITION RECORDS" lines (end - earliest)
 *   Probe wait-lag     BOOTSTRAP GROUP TOPIC [INTERVAL_MS] [TIMEOUT_S]
 *   Probe cleanup      BOOTSTRAP PREFIX                -> deletes topics and groups named PREFIX*
 * </pre>
 *
 * {@code wait-lag} reads the input's earliest and end offsets once (the input is filled before),
 * prints {@code ready <epoch-ms> <total>} and then polls every INTERVAL_MS (default 200) with
 * {@code listConsumerGroupOffsets} (committed, stable offsets only: a transaction's offsets count
 * once it commits). It prints {@code at <epoch-ms> <committed>} after every poll that found
 * committed offsets (bench/ab reads rates from them), {@code first <epoch-ms> <committed>} when the
 * group's first committed offset appears and {@code done <epoch-ms> <committed>} when every
 * partition's committed offset has reached the end offset, then exits 0;
 * {@code timeout <epoch-ms> <committed>} and exit 3 after TIMEOUT_S (default 600). Progress goes to stderr every 5 s.
 */
public final class Probe {
    private Probe() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args[0].equals("help") || args[0].equals("--help")) {
            usage();
            return;
        }
        try {
            switch (args[0]) {
                case "create-topic" -> {
                    need(args, 4);
                    try (Admin admin = admin(args[1])) {
                        admin.createTopics(List.of(new NewTopic(args[2], Integer.parseInt(args[3]), (short) 1)))
                             .all().get();
                    }
                }
                case "end-offsets" -> {
                    need(args, 3);
                    try (Admin admin = admin(args[1])) {
                        Map<TopicPartition, long[]> ranges = ranges(admin, args[2]);
                        ranges.forEach((tp, r) -> System.out.println(tp.partition() + " " + (r[1] - r[0])));
                    }
                }
                case "wait-lag" -> {
                    need(args, 4);
                    long interval = args.length > 4 ? Long.parseLong(args[4]) : 200;
                    long timeoutS = args.length > 5 ? Long.parseLong(args[5]) : 600;
                    System.exit(waitLag(args[1], args[2], args[3], interval, timeoutS));
                }
                case "cleanup" -> {
                    need(args, 3);
                    cleanup(args[1], args[2]);
                }
                default -> {
                    usage();
                    System.exit(2);
                }
            }
        } catch (ExecutionException e) {
            System.err.println("[probe] " + args[0] + " failed: " + e.getCause());
            System.exit(1);
        }
    }

    private static void usage() {
        System.out.println(String.join("\n",
            "usage: java -cp onceflow-bench-kstreams.jar dev.onceflow.bench.Probe COMMAND ...",
            "  create-topic BOOTSTRAP TOPIC PARTITIONS",
            "  end-offsets  BOOTSTRAP TOPIC                       (PARTITION RECORDS per line)",
            "  wait-lag     BOOTSTRAP GROUP TOPIC [INTERVAL_MS=200] [TIMEOUT_S=600]",
            "  cleanup      BOOTSTRAP PREFIX                      (delete topics and groups PREFIX*)"));
    }

    private static void need(String[] args, int n) {
        if (args.length < n) {
            usage();
            System.exit(2);
        }
    }

    private static Admin admin(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "onceflow-bench-probe");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "20000");
        return Admin.create(p);
    }

    /** Earliest and end offset of every partition of the topic: {earliest, end}. */
    private static Map<TopicPartition, long[]> ranges(Admin admin, String topic)
            throws ExecutionException, InterruptedException {
        TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get().get(topic);
        Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
        Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
        for (TopicPartitionInfo p : d.partitions()) {
            TopicPartition tp = new TopicPartition(topic, p.partition());
            earliest.put(tp, OffsetSpec.earliest());
            latest.put(tp, OffsetSpec.latest());
        }
        Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> e = admin.listOffsets(earliest).all().get();
        Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> l = admin.listOffsets(latest).all().get();
        Map<TopicPartition, long[]> out = new TreeMap<>((a, b) -> Integer.compare(a.partition(), b.partition()));
        for (TopicPartition tp : earliest.keySet()) {
            out.put(tp, new long[] {e.get(tp).offset(), l.get(tp).offset()});
        }
        return out;
    }

    private static int waitLag(String bootstrap, String group, String topic, long intervalMs, long timeoutS)
            throws ExecutionException, InterruptedException {
        try (Admin admin = admin(bootstrap)) {
            Map<TopicPartition, long[]> ranges = ranges(admin, topic);
            long total = ranges.values().stream().mapToLong(r -> r[1] - r[0]).sum();
            committed(admin, group, topic); // one round trip before "ready": connections are up
            System.out.println("ready " + System.currentTimeMillis() + " " + total);
            System.out.flush();

            long deadline = System.currentTimeMillis() + timeoutS * 1000;
            long nextProgress = System.currentTimeMillis() + 5000;
            boolean first = false;
            while (true) {
                long next = System.currentTimeMillis() + intervalMs;
                Map<TopicPartition, Long> c = committed(admin, group, topic);
                long now = System.currentTimeMillis();
                long done = 0;
                boolean complete = true;
                for (Map.Entry<TopicPartition, long[]> en : ranges.entrySet()) {
                    long[] r = en.getValue();
                    Long off = c.get(en.getKey());
                    long at = off == null ? r[0] : Math.max(r[0], Math.min(off, r[1]));
                    done += at - r[0];
                    if (at < r[1]) {
                        complete = false;
                    }
                }
                if (!c.isEmpty()) {
                    System.out.println("at " + now + " " + done);
                }
                if (!first && !c.isEmpty()) {
                    first = true;
                    System.out.println("first " + now + " " + done);
                    System.out.flush();
                }
                if (complete) {
                    System.out.println("done " + now + " " + done);
                    System.out.flush();
                    return 0;
                }
                if (now >= deadline) {
                    System.out.println("timeout " + now + " " + done);
                    System.out.flush();
                    return 3;
                }
                if (now >= nextProgress) {
                    System.err.printf("[probe] %s: %d/%d committed%n", group, done, total);
                    nextProgress = now + 5000;
                }
                long sleep = next - System.currentTimeMillis();
                if (sleep > 0) {
                    Thread.sleep(sleep);
                }
            }
        }
    }

    private static Map<TopicPartition, Long> committed(Admin admin, String group, String topic)
            throws ExecutionException, InterruptedException {
        Map<TopicPartition, OffsetAndMetadata> m;
        try {
            m = admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
        } catch (ExecutionException e) {
            if (e.getCause() instanceof GroupIdNotFoundException) {
                return Map.of();
            }
            throw e;
        }
        Map<TopicPartition, Long> out = new HashMap<>();
        m.forEach((tp, om) -> {
            if (om != null && tp.topic().equals(topic)) {
                out.put(tp, om.offset());
            }
        });
        return out;
    }

    private static void cleanup(String bootstrap, String prefix) throws ExecutionException, InterruptedException {
        try (Admin admin = admin(bootstrap)) {
            Set<String> topics = admin.listTopics().names().get().stream()
                .filter(t -> t.startsWith(prefix)).collect(Collectors.toSet());
            List<String> groups = new ArrayList<>();
            for (GroupListing g : admin.listGroups().all().get()) {
                if (g.groupId().startsWith(prefix)) {
                    groups.add(g.groupId());
                }
            }
            int deletedGroups = 0;
            for (String g : groups) {
                deletedGroups += deleteGroup(admin, g) ? 1 : 0;
            }
            if (!topics.isEmpty()) {
                admin.deleteTopics(topics).all().get();
            }
            System.out.println("deleted " + topics.size() + " topics, " + deletedGroups + " groups with prefix " + prefix);
        }
    }

    /** Deletes a group; a group that still lists members (stopped ones that did not leave) has
     *  them removed first. */
    private static boolean deleteGroup(Admin admin, String group) throws InterruptedException {
        for (int attempt = 0; attempt < 3; attempt++) {
            try {
                admin.deleteConsumerGroups(List.of(group)).all().get();
                return true;
            } catch (ExecutionException e) {
                if (e.getCause() instanceof GroupIdNotFoundException) {
                    return true;
                }
                if (!(e.getCause() instanceof GroupNotEmptyException) || attempt == 2) {
                    System.err.println("[probe] could not delete group " + group + ": " + e.getCause());
                    return false;
                }
                try {
                    admin.removeMembersFromConsumerGroup(group, new RemoveMembersFromConsumerGroupOptions()).all().get();
                } catch (ExecutionException removal) {
                    System.err.println("[probe] could not remove the members of " + group + ": " + removal.getCause());
                }
            }
        }
        return false;
    }
}
