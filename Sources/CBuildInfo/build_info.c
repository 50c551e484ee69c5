#include "build_info.h"
#ifndef FIELDGATE_VERSION
#error "Package.swift defines FIELDGATE_VERSION"
#endif
const char *fieldgate_build_version(void) { return FIELDGATE_VERSION; }
