// CLibPQ: PostgreSQL's client library (Debian libpq-dev). Only Store's PGConnection sees it.
#include <postgresql/libpq-fe.h>
