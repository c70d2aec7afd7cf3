// CBLAS: the one C surface of OpenBLAS that Swift sees (Debian libopenblas-dev).
#include <cblas.h>
