// Readiness probe of the local Kafka broker, run by deploy/local/stack in Java's
// single-file source mode: java -cp '<kafka tools jars>/*' StackProbe.java BOOTSTRAP TOPIC
//
// Produces one record (acks=all, idempotent) and reads that very record back by
// partition and offset. The consumer has no group.id, so the probe leaves no consumer
// group behind. Exit 0 on a round trip, 1 otherwise.
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
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
        String token = "probe-" + UUID.randomUUID();

        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("max.block.ms", "10000");
        p.put("request.timeout.ms", "5000");
        p.put("delivery.timeout.ms", "10000");
        RecordMetadata md;
        try (KafkaProducer<String, String> producer =
                new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            md = producer.send(new ProducerRecord<>(topic, token, token)).get();
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
                        System.out.printf("round trip ok: %s-%d@%d%n", topic, md.partition(), md.offset());
                        return;
                    }
                }
            }
        }
        System.err.println("produced " + token + " at " + tp + "@" + md.offset() + " but did not read it back");
        System.exit(1);
    }
}
