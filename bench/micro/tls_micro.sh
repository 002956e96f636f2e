#!/usr/bin/env bash
# tls_micro.sh: user-space instructions per server-side TLS operation (see tls_micro.c), each
# variant run at N and 2N operations under callgrind; the difference / N cancels the setup.
# Usage: bash bench/micro/tls_micro.sh [N]   (from the repository root, after make)
set -euo pipefail
N=${1:-40}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -std=c17 -D_GNU_SOURCE -O2 -g -Isrc -o "$out/tls_micro" bench/micro/tls_micro.c \
    build/libmoat.a -lfyaml -ljansson -lxxhash -lssl -lcrypto -pthread -lm
ir() { # variant n -> instructions collected inside srv_*
    valgrind --tool=callgrind --toggle-collect='srv_*' --callgrind-out-file="$out/cg" \
        "$out/tls_micro" "$1" "$2" >/dev/null 2>"$out/err" || { cat "$out/err"; exit 1; }
    grep -m1 '^summary:' "$out/cg" | awk '{print $2}'
}
printf '%-16s %14s\n' variant 'Ir per op'
for v in exch_release exch_norelease rec1 rec2; do
    a=$(ir $v $((N * 10))); b=$(ir $v $((N * 20)))
    printf '%-16s %14.0f\n' $v "$(echo "($b - $a) / ($N * 10)" | bc -l)"
done
for v in full1 full2 res1 res2 tls12 rsa; do
    a=$(ir $v $N); b=$(ir $v $((N * 2)))
    printf '%-16s %14.0f\n' $v "$(echo "($b - $a) / $N" | bc -l)"
done
"$out/tls_micro" idle 1000
