#pragma once
/* The statistics of one table on one shard, as one list: the shard fills
 * the struct (server/table.c), and the Stats reply, the metrics endpoint and
 * `ctrps-cli stats` each walk the same list, so a field added here shows up
 * in all three (the wire field of the same name in proto/ctrps.proto's
 * TableStats must be added with it). */

#include <stdint.h>

/* XX(name, type, metric, help): every field is a uint64_t; type is COUNTER
 * or GAUGE (PS_PROM_<type>, common/promtext.h) and metric its Prometheus
 * name, labelled there with shard and table. */
#define PS_TABLE_STATS_MAP(XX)                                                                \
    XX(rows, GAUGE, "ctrps_table_rows",                                                       \
       "rows pushes made (stored, or awaiting write-back); a pull makes none")                \
    XX(rows_in_memory, GAUGE, "ctrps_table_memory_rows",                                      \
       "memory tier slots in use: rows, and the init rule's rows of keys only pulled")        \
    XX(dirty_rows, GAUGE, "ctrps_table_dirty_rows", "rows in memory awaiting write-back")     \
    XX(capacity, GAUGE, "ctrps_table_memory_capacity_rows", "rows the memory tier can hold")  \
    XX(pulled_rows, COUNTER, "ctrps_table_pulled_rows_total", "rows read by Pull")            \
    XX(pushed_rows, COUNTER, "ctrps_table_pushed_rows_total", "rows updated by Push")         \
    XX(looked_up_rows, COUNTER, "ctrps_table_looked_up_rows_total", "rows read by Lookup")    \
    XX(dropped_nonfinite, COUNTER, "ctrps_table_dropped_nonfinite_rows_total",                \
       "pushed rows dropped for a non-finite gradient")                                       \
    XX(memory_misses, COUNTER, "ctrps_table_memory_misses_total", "keys looked for in RocksDB") \
    XX(evictions, COUNTER, "ctrps_table_evicted_rows_total", "rows dropped from the memory tier") \
    XX(admitted, COUNTER, "ctrps_table_admitted_rows_total",                                  \
       "rows created (or re-created) by an admitted push")                                    \
    XX(rejected, COUNTER, "ctrps_table_rejected_keys_total",                                  \
       "pushed keys admission kept out (gradient dropped)")                                   \
    XX(expired, COUNTER, "ctrps_table_expired_rows_total",                                    \
       "rows that died: ttl_s ran out, or expire_below")                                      \
    XX(rocksdb_bytes, GAUGE, "ctrps_table_rocksdb_bytes",                                     \
       "this table's SST files and memtables in bytes")

typedef struct ps_table_stats {
#define PS_TABLE_STATS_FIELD(name, type, metric, help) uint64_t name;
    PS_TABLE_STATS_MAP(PS_TABLE_STATS_FIELD)
#undef PS_TABLE_STATS_FIELD
} ps_table_stats;
