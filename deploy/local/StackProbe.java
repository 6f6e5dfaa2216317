// Readiness probe of the local Kafka broker or cluster, run by deploy/local/stack in Java's
// single-file source mode:
//   java -cp '<kafka tools jars>/*' StackProbe.java BOOTSTRAP TOPIC [OPTIONS]
//
// Produces one record (acks=all, idempotent) and reads that very record back by
// partition and offset. The consumer has no group.id, so the probe leaves no consumer
// group behind. Exit 0 on a round trip, 1 otherwise.
//
// Options (the three-broker cluster, `stack up --brokers 3`):
//   --nodes 1,2,3    first require these node ids among the cluster's live brokers
//   --transactional  write the record in a transaction (transactional.id onceflow-stack-probe)
//                    and read it back with read_committed: the transaction coordinator and its
//                    replicated log work
//   --rf N           then require replication factor N of TOPIC and of __transaction_state
//   --min-isr N      … and min.insync.replicas N of both
// Exit 2 when a replication setting differs (a lasting misconfiguration, not worth a retry).
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class StackProbe {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        List<Integer> nodes = List.of();
        boolean transactional = false;
        int rf = 0;
        String minIsr = null;
        for (int i = 2; i < args.length; i++) {
            switch (args[i]) {
                case "--nodes" -> nodes = Arrays.stream(args[++i].split(","))
                        .map(String::trim).map(Integer::valueOf).toList();
                case "--transactional" -> transactional = true;
                case "--rf" -> rf = Integer.parseInt(args[++i]);
                case "--min-isr" -> minIsr = args[++i];
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        String token = "probe-" + UUID.randomUUID();

        Properties a = new Properties();
        a.put("bootstrap.servers", bootstrap);
        a.put("request.timeout.ms", "5000");
        a.put("default.api.timeout.ms", "10000");
        if (!nodes.isEmpty()) {
            try (Admin admin = Admin.create(a)) {
                Set<Integer> live = admin.describeCluster().nodes().get(10, TimeUnit.SECONDS)
                        .stream().map(Node::id).collect(Collectors.toCollection(TreeSet::new));
                if (!live.containsAll(nodes)) {
                    System.err.println("waiting for nodes " + nodes + "; live brokers: " + live);
                    System.exit(1);
                }
            }
        }

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("max.block.ms", "10000");
        p.put("request.timeout.ms", "5000");
        p.put("delivery.timeout.ms", "10000");
        if (transactional) {
            p.put("transactional.id", "onceflow-stack-probe");
            p.put("transaction.timeout.ms", "30000");
        }
        RecordMetadata md;
        try (KafkaProducer<String, String> producer =
                new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            if (transactional) {
                producer.initTransactions();
                producer.beginTransaction();
            }
            md = producer.send(new ProducerRecord<>(topic, token, token)).get();
            if (transactional) {
                producer.commitTransaction();
            }
        }

        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("enable.auto.commit", "false");
        c.put("isolation.level", "read_committed");
        c.put("request.timeout.ms", "5000");
        c.put("default.api.timeout.ms", "10000");
        TopicPartition tp = new TopicPartition(topic, md.partition());
        try (KafkaConsumer<String, String> consumer =
                new KafkaConsumer<>(c, new StringDeserializer(), new StringDeserializer())) {
            consumer.assign(List.of(tp));
            consumer.seek(tp, md.offset());
            long deadline = System.currentTimeMillis() + 10_000;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    if (token.equals(r.value())) {
                        System.out.printf("round trip ok%s: %s-%d@%d%n",
                                transactional ? " (transaction committed, read_committed)" : "",
                                topic, md.partition(), md.offset());
                        if (rf > 0) {
                            checkReplication(a, List.of(topic, "__transaction_state"), rf, minIsr);
                        }
                        return;
                    }
                }
            }
        }
        System.err.println("produced " + token + " at " + tp + "@" + md.offset() + " but did not read it back");
        System.exit(1);
    }

    // Every partition of every topic has rf replicas (and the topic min.insync.replicas minIsr,
    // unless null); prints each topic's replication, ISR sizes and min.insync.replicas. Exit 2
    // when one differs.
    static void checkReplication(Properties a, List<String> topics, int rf, String minIsr)
            throws Exception {
        try (Admin admin = Admin.create(a)) {
            Map<String, TopicDescription> described =
                    admin.describeTopics(topics).allTopicNames().get(10, TimeUnit.SECONDS);
            List<ConfigResource> resources = topics.stream()
                    .map(t -> new ConfigResource(ConfigResource.Type.TOPIC, t)).toList();
            Map<ConfigResource, Config> configs =
                    admin.describeConfigs(resources).all().get(10, TimeUnit.SECONDS);
            boolean ok = true;
            for (String t : topics) {
                TopicDescription d = described.get(t);
                Set<Integer> rfs = new TreeSet<>();
                Set<Integer> isrs = new TreeSet<>();
                d.partitions().forEach(pi -> {
                    rfs.add(pi.replicas().size());
                    isrs.add(pi.isr().size());
                });
                String topicMinIsr = configs.get(new ConfigResource(ConfigResource.Type.TOPIC, t))
                        .get("min.insync.replicas").value();
                System.out.printf("replication: %s partitions %d, replication factor %s, ISR sizes %s, min.insync.replicas %s%n",
                        t, d.partitions().size(), rfs, isrs, topicMinIsr);
                ok &= rfs.equals(Set.of(rf)) && (minIsr == null || minIsr.equals(topicMinIsr));
            }
            if (!ok) {
                System.out.println("replication differs: want replication factor " + rf
                        + (minIsr == null ? "" : " and min.insync.replicas " + minIsr));
                System.exit(2);
            }
        }
    }
}
