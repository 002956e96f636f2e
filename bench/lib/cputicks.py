"""Print the CPU time (clock ticks) used by a process tree: utime+stime+cutime+cstime summed
over ROOT_PID and all of its live descendants (nginx master+worker, varnishd manager+child...).
cutime/cstime only hold reaped children, so nothing is counted twice."""
import os
import sys


def main() -> None:
    root = int(sys.argv[1])
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = data[data.rindex(")") + 2:].split()
        # rest[0]=state [1]=ppid ... [11]=utime [12]=stime [13]=cutime [14]=cstime
        pid = int(name)
        parent[pid] = int(rest[1])
        ticks[pid] = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    if root not in ticks:
        print("gone")
        sys.exit(1)
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    print(sum(ticks[p] for p in tree))


if __name__ == "__main__":
    main()
