/* default.c: the embedded default configuration (`moat` without -c, `make demo`). */
#include "config/config.h"

/* Kept as a readable, commented document: it is also the first example a new user sees
 * (`moat --print-default-config` style tooling can print it as is). */
const char moat_config_default_yaml[] =
    "# moat: the built-in demo configuration.\n"
    "# Copy it to moat.yaml, change what you need, and run `moat -c moat.yaml`.\n"
    "# Every key is described in docs/configuration.md.\n"
    "\n"
    "# Where clients connect. A list, or a single \"HOST:PORT\".\n"
    "listen: [\"127.0.0.1:8080\"]\n"
    "\n"
    "# moat's built-in demo site, so there is something to proxy to out of the box.\n"
    "demo_origin: \"127.0.0.1:8081\"\n"
    "\n"
    "# The admin API (metrics, reload). On loopback it needs no token; on any other\n"
    "# address set token_file.\n"
    "admin:\n"
    "  listen: \"127.0.0.1:9090\"\n"
    "\n"
    "log:\n"
    "  access: stderr   # path | stderr | stdout | off\n"
    "  level: info      # debug | info | warn | error\n"
    "\n"
    "# Pools are groups of origins moat forwards to.\n"
    "pools:\n"
    "  demo:\n"
    "    origins: [\"127.0.0.1:8081\"]\n"
    "\n"
    "# Sites pick a pool by Host: exact names first, then the longest *.suffix, then \"*\".\n"
    "sites:\n"
    "  - hosts: [\"*\"]\n"
    "    pool: demo\n";
