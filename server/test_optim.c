#include <criterion/criterion.h>

#include "optim.h"
