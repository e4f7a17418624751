#pragma once
/* Minibatches: parsed examples turned into what the shards and the model
 * need. Each table the model reads gets the batch's unique keys (pulled once,
 * pushed once with the gradient summed over every occurrence); each example
 * keeps, per input field, the positions of its keys in those unique lists.
 *
 * The layout (ps_batch_layout) is fixed at start from the config: which
 * slots are embedding fields and where each sits in the model input x0, the
 * LR table, the CAN induction and feed slots. A batch is filled by one thread
 * (the reader) and then handed whole to another (the trainer). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "parse.h"
#include "reader.h"
#include "wconfig.h"

#define PS_NO_KEY UINT32_MAX

typedef struct ps_batch_table {
    const ps_table_config *cfg;  /* borrowed from the config */
    uint32_t dim;
    uint64_t *keys;              /* unique keys, first-seen order */
    uint32_t nkeys;
    float *values;               /* nkeys x dim, filled by the pull */
    float *grads;                /* nkeys x dim, summed by backward */
    /* key -> index, open addressing; a slot is live iff its stamp matches */
    uint64_t *hkeys;
    uint32_t *hidx, *hstamp;
    uint32_t hmask, stamp;
    uint32_t cap;
} ps_batch_table;

typedef struct ps_batch_field {
    uint16_t slot_id;
    uint32_t table;              /* index into the layout's tables */
    uint32_t dim, offset;        /* columns of x0 */
} ps_batch_field;

typedef struct ps_batch_layout {
    const ps_config *cfg;
    const ps_model_config *model;
    ps_batch_table *tables;      /* templates: which tables, in this order */
    uint32_t ntables;
    ps_batch_field *fields;      /* embedding fields, x0 order */
    uint32_t nfields;
    uint16_t *field_of_slot;     /* [65536]: field index + 1, or 0 */
    uint32_t emb_width, ndense, can_width, x0_width;
    int32_t lr_table;            /* table index, or -1 */
    uint64_t lr_bias_key;        /* always present in lr models */
    uint8_t *lr_slot;            /* [65536]: 1 if the slot feeds the LR */
    /* [ndense]: the LR weight of dense input k (a Criteo integer in `integers
     * = dense` mode whose slot the LR table lists), multiplied by the value
     * log(1+x); lr_dense_on[k] = 0: that input is not in the LR. */
    uint64_t *lr_dense_key;
    uint8_t *lr_dense_on;
    int32_t can_ind_table, can_feed_table;
    uint8_t *can_ind_of_slot;    /* [65536]: induction index + 1 */
    uint8_t *can_feed_of_slot;   /* [65536]: feed index + 1 */
    uint32_t ncan_ind, ncan_feed, can_max_len, can_out_width;
} ps_batch_layout;

typedef struct ps_batch {
    const ps_batch_layout *L;
    uint32_t n, cap;             /* examples */
    float *labels;
    float *dense;                /* n x ndense */
    uint32_t *occ_off;           /* n*nfields + 1 */
    uint32_t *occ_key;
    uint32_t nocc, occ_cap;
    uint32_t *lr_off;            /* n + 1 */
    uint32_t *lr_key;
    float *lr_val;
    uint32_t nlr, lr_cap;
    uint32_t *can_ind;           /* n x ncan_ind: key index or PS_NO_KEY */
    uint32_t *can_feed;          /* n x ncan_feed x max_len: key index */
    uint16_t *can_len;           /* n x ncan_feed */
    ps_batch_table *tables;      /* ntables, own key lists and buffers */
    /* Output lines (--predict, ps_batch_note_line): every input line of the
     * batch in input order, as the index of the example it became or
     * PS_NO_KEY for a rejected line; with an id column, line i's id is
     * ids[id_end[i-1] .. id_end[i]) (id_end[-1] taken as 0). */
    uint32_t nout;
    uint32_t *out_example;       /* cap */
    uint32_t *id_end;            /* cap */
    char *ids;
    size_t ids_len, ids_cap;
    /* reading state after the batch's last line */
    uint64_t lines, malformed;
    ps_reader_pos end;
    uint32_t pass;               /* 0-based pass over the input it was read in */
    double input_done;           /* share of the run's input read, in [0, 1]; NaN if unknown */
} ps_batch;

/* Build the layout from the config (after the parser exists: dense width). */
int ps_batch_layout_init(ps_batch_layout *L, const ps_config *cfg, uint32_t ndense, char *err,
                         size_t errlen);
void ps_batch_layout_deinit(ps_batch_layout *L);

int ps_batch_new(const ps_batch_layout *L, uint32_t cap, ps_batch **ret_batch);
void ps_batch_free(ps_batch *b);
void ps_batch_clear(ps_batch *b);
/* Add one labelled example. */
int ps_batch_add(ps_batch *b, const ps_example *ex);
/* Record an output line (--predict): the example just added (parsed) or a
 * rejected line, with its id text (id may be NULL when idlen is 0).
 * PS_ELIMIT once cap lines are recorded, -ENOMEM. */
int ps_batch_note_line(ps_batch *b, bool parsed, const char *id, size_t idlen);
