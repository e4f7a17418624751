#include "gen.h"
