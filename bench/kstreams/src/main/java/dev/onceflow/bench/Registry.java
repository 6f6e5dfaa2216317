package dev.onceflow.bench;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.ConcurrentHashMap;

import org.apache.avro.Schema;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/**
 * A minimal client of a Confluent-compatible schema registry (the stack's AxonOps registry): the
 * writer schema of an id ({@code GET /schemas/ids/{id}}, asked once per id and kept), and
 * registering a schema under a subject ({@code POST /subjects/{subject}/versions}).
 *
 * <p>Like onceflow's codec: an id the registry answers 404 for, or whose schema does not parse,
 * is remembered as such (a flood of records with an unknown id does not hammer the registry) and
 * those records are dead letters; an unreachable registry is not the record's fault, so the
 * lookup is retried ({@link Unavailable} after {@code RETRIES} attempts a second apart).
 * Thread-safe.
 */
final class Registry {
    private static final String CONTENT_TYPE = "application/vnd.schemaregistry.v1+json";
    private static final int RETRIES = 30;

    /** The registry could not be asked (connection refused, time-out, 5xx). */
    static final class Unavailable extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Unavailable(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** What the registry says of one id: its parsed schema, or why there is none. */
    record Writer(int id, Schema schema, String error) {}

    private final URI base;
    private final HttpClient http;
    private final ObjectMapper json = new ObjectMapper();
    private final ConcurrentHashMap<Integer, Writer> byId = new ConcurrentHashMap<>();

    Registry(String url) {
        String u = url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
        this.base = URI.create(u + "/");
        this.http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    }

    /** The writer schema of {@code id}: asked for once, then from memory. */
    Writer writer(int id) {
        Writer w = byId.get(id);
        if (w != null) {
            return w;
        }
        w = fetch(id);
        Writer before = byId.putIfAbsent(id, w);
        return before != null ? before : w;
    }

    private Writer fetch(int id) {
        HttpRequest req = HttpRequest.newBuilder(base.resolve("schemas/ids/" + id))
            .timeout(Duration.ofSeconds(10)).header("Accept", CONTENT_TYPE).GET().build();
        HttpResponse<String> res = send(req, "schema id " + id);
        if (res.statusCode() == 404) {
            return new Writer(id, null, "schema id " + id + ": the registry does not have it");
        }
        if (res.statusCode() != 200) {
            throw new Unavailable("schema id " + id + ": the registry answered " + res.statusCode(), null);
        }
        try {
            JsonNode body = json.readTree(res.body());
            JsonNode type = body.get("schemaType");
            if (type != null && !type.isNull() && !type.asText().equals("AVRO")) {
                return new Writer(id, null, "schema id " + id + ": a " + type.asText() + " schema, not Avro");
            }
            JsonNode text = body.get("schema");
            if (text == null || !text.isTextual()) {
                return new Writer(id, null, "schema id " + id + ": the registry's answer has no schema");
            }
            return new Writer(id, new Schema.Parser().parse(text.asText()), null);
        } catch (IOException | RuntimeException e) {
            return new Writer(id, null, "schema id " + id + ": " + e.getMessage());
        }
    }

    /** Registers {@code schema} under {@code subject} (or finds it registered) and returns its id. */
    int register(String subject, Schema schema) {
        String body;
        try {
            body = json.writeValueAsString(json.createObjectNode().put("schema", schema.toString()));
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        String path = "subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8).replace("+", "%20")
            + "/versions";
        HttpRequest req = HttpRequest.newBuilder(base.resolve(path))
            .timeout(Duration.ofSeconds(10)).header("Content-Type", CONTENT_TYPE)
            .header("Accept", CONTENT_TYPE).POST(HttpRequest.BodyPublishers.ofString(body)).build();
        HttpResponse<String> res = send(req, "registering " + subject);
        if (res.statusCode() != 200) {
            throw new IllegalStateException("registering " + subject + ": the registry answered "
                + res.statusCode() + ": " + res.body());
        }
        try {
            JsonNode id = json.readTree(res.body()).get("id");
            if (id == null || !id.canConvertToInt()) {
                throw new IllegalStateException("registering " + subject + ": no id in " + res.body());
            }
            return id.asInt();
        } catch (IOException e) {
            throw new IllegalStateException("registering " + subject + ": " + res.body(), e);
        }
    }

    private HttpResponse<String> send(HttpRequest req, String what) {
        Exception last = null;
        for (int attempt = 1; attempt <= RETRIES; attempt++) {
            try {
                HttpResponse<String> res = http.send(req, HttpResponse.BodyHandlers.ofString());
                if (res.statusCode() < 500) {
                    return res;
                }
                last = new IOException("HTTP " + res.statusCode() + ": " + res.body());
            } catch (IOException e) {
                last = e;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new Unavailable(what + ": interrupted", e);
            }
            System.err.println("[dedupe] " + what + ": the registry is unavailable (" + last
                + "), attempt " + attempt + " of " + RETRIES);
            try {
                Thread.sleep(1000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new Unavailable(what + ": interrupted", e);
            }
        }
        throw new Unavailable(what + ": the registry is unavailable", last);
    }
}
