#ifndef FIELDGATE_CFILESYSTEM_SHIM_H
#define FIELDGATE_CFILESYSTEM_SHIM_H
/* syncfs(2), a GNU extension Swift's Glibc module does not expose: the spool's one flush of its file system after
 * an unclean stop. Declared here rather than through _GNU_SOURCE, which the Glibc module was built without. */
extern int syncfs(int fd);

static inline int fg_syncfs(int fd) { return syncfs(fd); }
#endif
