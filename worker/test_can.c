#include <criterion/criterion.h>

#include "can.h"
