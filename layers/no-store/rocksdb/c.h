/* Layer guard (layers/README.md): only the shard core (server/) talks to
 * RocksDB. */
#error "<rocksdb/c.h> is the shard core's: not included from this library (see README.md, Code map)"
