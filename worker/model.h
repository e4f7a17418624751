#pragma once
/* The worker's model over a batch whose rows were pulled: LR on sparse
 * features, or a dense network (DCN-V2 cross layers and/or an MLP) on
 *   x0 = [embedding fields (pooled) | dense features | CAN unit outputs].
 * Backward sums each unique key's gradient over every occurrence into its
 * batch table's grads (ready to push) and accumulates the dense blocks'
 * gradients. Gradients are of the batch's mean logloss (ALGORITHMS.md §0). */

#include <stddef.h>

#include "batch.h"
#include "nn.h"

typedef struct ps_model ps_model;

int ps_model_new(const ps_batch_layout *L, ps_model **ret_model, char *err, size_t errlen);
void ps_model_free(ps_model *m);

/* Dense blocks (empty for LR); owned by the model. */
ps_nn_params *ps_model_params(ps_model *m);
/* Deterministic initial dense values from the model seed. */
void ps_model_init_params(ps_model *m, uint64_t seed);

/* Logits for the batch (values of every table pulled). */
int ps_model_forward(ps_model *m, ps_batch *b, float *ret_logits);
/* dlogits from the loss; writes b->tables[*].grads, adds the dense grads. */
int ps_model_backward(ps_model *m, ps_batch *b, const float *dlogits);
