#ifndef FIELDGATE_BUILD_INFO_H
#define FIELDGATE_BUILD_INFO_H
/* The package version this build was made for (packaging/build-deb.sh sets FIELDGATE_VERSION; Package.swift passes
 * it here, since a Swift compilation condition cannot carry a value). */
const char *fieldgate_build_version(void);
#endif
