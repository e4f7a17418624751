#include <criterion/criterion.h>

#include "nn.h"
