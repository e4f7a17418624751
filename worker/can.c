#include "can.h"
