#pragma once
/* The statistics of one table on one shard, as one list: the shard fills
 * the struct (server/table.c), and the Stats reply, the metrics endpoint and
 * `ctrps-cli stats` each walk the same list, so a field added here shows up
 * in all three (the wire field of the same name in proto/ctrps.proto's
 * TableStats must be added with it). */

#include <stdint.h>

/* XX(name, help): every field is a uint64_t. */
#define PS_TABLE_STATS_MAP(XX)                                                                \
    XX(rows, "rows stored (RocksDB or created in memory)")                                    \
    XX(rows_in_memory, "rows held in the memory tier")                                        \
    XX(dirty_rows, "rows in memory awaiting write-back")                                      \
    XX(capacity, "rows the memory tier can hold")                                             \
    XX(pulled_rows, "rows read by Pull")                                                      \
    XX(pushed_rows, "rows updated by Push")                                                   \
    XX(looked_up_rows, "rows read by Lookup")                                                 \
    XX(dropped_nonfinite, "pushed rows dropped for a non-finite gradient")                    \
    XX(memory_misses, "keys looked for in RocksDB")                                           \
    XX(evictions, "rows dropped from the memory tier")                                        \
    XX(admitted, "rows created (or re-created) by an admitted push")                          \
    XX(rejected, "pushed keys admission kept out (gradient dropped)")                         \
    XX(expired, "rows that died: ttl_s ran out, or expire_below")                             \
    XX(rocksdb_bytes, "this table's SST files and memtables in bytes")

typedef struct ps_table_stats {
#define PS_TABLE_STATS_FIELD(name, help) uint64_t name;
    PS_TABLE_STATS_MAP(PS_TABLE_STATS_FIELD)
#undef PS_TABLE_STATS_FIELD
} ps_table_stats;
