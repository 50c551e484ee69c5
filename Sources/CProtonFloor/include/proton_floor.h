#ifndef FIELDGATE_PROTON_FLOOR_H
#define FIELDGATE_PROTON_FLOOR_H

/* proton-floor's work (proton_floor.c): attaches the leaves' links, then idles until the process is killed. It
   never returns; a usage error or any failure exits the process. */
int proton_floor_main(int argc, char **argv);

/* As fieldgated (MemoryHousekeeping): one malloc arena, fixed thresholds. Before any other thread allocates: a
   thread that allocated first keeps an arena of its own. */
void proton_floor_limit_arenas(void);

#endif
