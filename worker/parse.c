#include "parse.h"
