#include "proton_floor.h"

int main(int argc, char **argv) { return proton_floor_main(argc, argv); }
