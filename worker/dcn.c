#include "dcn.h"
