#ifndef FIELDGATE_CSPAWN_SHIM_H
#define FIELDGATE_CSPAWN_SHIM_H
/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34, a GNU extension Swift's Glibc module does not expose):
 * a child gets the descriptors its spawner hands it on 0-2 and no others. Proton opens its sockets without
 * close-on-exec, so every program started while a connection or listener was open held it: a listener closed in
 * the parent stayed bound (and accepting) in the child, an AMQP connection outlived the process that made it. */
#include <spawn.h>
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int from);

static inline int fg_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
#endif
