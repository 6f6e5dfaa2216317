#!/usr/bin/env python3
"""bench/profile_report.py OUT N [BUCKET]: instructions per record of the processor, from the two
callgrind runs of bench/profile (OUT/n and OUT/2n, over N and 2N records): (2N run - N run) / N,
by where they are spent (a bucket per library or kind of work, by function symbol, then by source
file), and the top functions; with BUCKET, that bucket's top functions too."""
import re, sys, collections
out, n = sys.argv[1], int(sys.argv[2])
def load(path):
    rows = collections.Counter(); total=None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if not m: continue
        v=int(m.group(1).replace(",","")); name=m.group(2).strip()
        if name.startswith("PROGRAM TOTALS"): total=v; continue
        rows[name]+=v
    return rows,total
a,ta=load(f"{out}/n/self.txt"); b,tb=load(f"{out}/2n/self.txt")
def bucket(name):
    path, _, fn = name.partition(":")
    f = fn + "  @" + path
    rules=[("malloc/free/realloc", r"malloc\.c|^_?mi_|mimalloc|__rdl_alloc|__rdl_dealloc|__rust_alloc|__rust_dealloc|realloc|dealloc"),
           ("SHA-256 (entity key)", r"^sha2::|^<sha2"),
           ("SipHash (std HashMap)", r"hash::sip|hash_one|BuildHasher"),
           ("apache-avro", r"^apache_avro|^<apache_avro"),
           ("Unicode NFKC (e-mail normalisation)", r"unicode_normalization|@.*unicode-normalization"),
           ("librdkafka", r"^rd_|^rd_kafka|@.*rdkafka-sys"),
           ("serde_json", r"serde_json"),
           ("schema_registry_converter", r"schema_registry_converter"),
           ("uuid / sha1", r"^uuid|^sha1|^<sha1"),
           ("onceflow", r"onceflow::"),
           ("memcpy/memcmp/memset", r"memmove|memcpy|memcmp|memset|strlen"),
           ("SipHash (std HashMap)", r"hash/sip\.rs|hash_one|BuildHasher"),
           ("SHA-256 (entity key)", r"sha2-"),
           ("libcrypto (OpenSSL)", r"libcrypto"),
           ("Unicode NFKC (e-mail normalisation)", r"unicode-normalization|unicode_normalization"),
           ("apache-avro", r"apache-avro|apache_avro"),
           ("schema_registry_converter", r"schema_registry_converter"),
           ("serde_json", r"serde_json"),
           ("librdkafka", r"rdkafka|/librdkafka/|rd_kafka|rd_|lz4|zstd|crc32"),
           ("tokio", r"tokio-"),
           ("uuid / sha1", r"uuid-|sha1"),
           ("onceflow", r"/work/main/src|^src/"),
           ("std (fmt, strings, collections)", r"library/(core|alloc|std)/"),
           ("libc / kernel entry", r"libc\.so|ld-linux|\?\?\?")]
    for k,rx in rules:
        if re.search(rx,f): return k
    return "other"
per=collections.Counter()
for k in set(a)|set(b):
    per[bucket(k)] += (b[k]-a[k])/n
total=(tb-ta)/n
print(f"instructions per record ((2N run - N run) / N, N = {n}): {total:,.0f}\n")
print("| where | instructions / record | share |\n|---|---:|---:|")
for k,v in per.most_common():
    print(f"| {k} | {v:,.0f} | {100*v/total:.1f} % |")
print("\ntop functions (self cost per record):")
fn=collections.Counter({k:(b[k]-a[k])/n for k in b})
for k,v in fn.most_common(25):
    print(f"{v:10,.0f}  {k[:160]}")
if len(sys.argv) > 3:
    want = sys.argv[3]
    print(f"\nin {want}:")
    c = collections.Counter({k: (b[k]-a[k])/n for k in b if bucket(k) == want})
    for k, v in c.most_common(30):
        print(f"{v:10,.0f}  {k.partition(':')[2][:170]}")
