#include "optim_layout.h"

const char *const ps_optimizer_names[PS_OPT_COUNT] = {PS_OPTIMIZER_MAP(PS_ENUM_STR)};

uint32_t ps_optim_state_width(const ps_optim_params *opt, uint32_t dim) {
    switch (opt->kind) {
    case PS_OPT_FTRL:
    case PS_OPT_FTRL_GROUP_LASSO:
        return 3 * dim;
    case PS_OPT_ADAGRAD:
        return opt->rowwise ? dim + 1 : 2 * dim;
    }
    return 0;
}

int ps_optim_fields(const ps_optim_params *opt, const char *ret_names[PS_OPTIM_FIELDS_MAX]) {
    ret_names[0] = "w";
    if (opt->kind == PS_OPT_ADAGRAD) {
        ret_names[1] = "acc";
        return 2;
    }
    ret_names[1] = "z";
    ret_names[2] = "n";
    return 3;
}

const char *ps_optimizer_name(ps_optimizer_kind kind) {
    return ps_enum_name(ps_optimizer_names, PS_OPT_COUNT, (int)kind);
}
