"""Reading callgrind dumps: each function's own instructions, and, from a dump written with
`--dump-instr=yes`, which 64-byte lines of code ran: the code a request touches (its footprint).

At full load a proxy's code stays in the caches between requests; at 1,000 req/s the client,
the server and the other proxy run in between and evict it, so every request fetches its code
again. The instructions count the work; the lines count what has to be fetched for it.
"""
import re

LINE = 64

_NAME = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.+))?$")
_POS = re.compile(r"^(0x[0-9a-fA-F]+|[+-]\d+|\*|\d+)$")


class Dump:
    """One callgrind dump: `functions` {name: own instructions}, `code` {(object, address): own
    instructions} (empty unless the dump has instruction positions), `total` (the summary), and
    `complete`: the `totals:` line, which callgrind writes last, was there."""

    def __init__(self, text):
        self.functions, self.code, self.total = {}, {}, 0
        self.complete = False
        names = {"ob": {}, "fn": {}}
        positions = ["line"]
        obj = fn = None
        addr = 0
        after_call = False
        for line in text.splitlines():
            if line.startswith("positions:"):
                positions = line.split()[1:]
                continue
            if line.startswith(("summary:", "totals:")):
                self.total = int(line.split()[1])
                self.complete |= line.startswith("totals:")
                continue
            m = _NAME.match(line)
            if m:
                callee, kind, ident, name = m.groups()
                if name:
                    names[kind][ident] = name
                if not callee:  # cob=/cfn= name a call's target; the costs that follow are ours
                    if kind == "ob":
                        obj = names["ob"].get(ident)
                    else:
                        fn = names["fn"].get(ident)
                        self.functions.setdefault(fn, 0)
                continue
            if line.startswith("calls="):
                after_call = True  # the cost line after `calls=` is the call's inclusive cost
                continue
            fields = line.split()
            if len(fields) < len(positions) or not _POS.match(fields[0]):
                continue
            if positions[0] == "instr":
                a = fields[0]
                if a.startswith("0x"):
                    addr = int(a, 16)
                elif a != "*":
                    addr += int(a)
            if after_call:
                after_call = False
                continue
            # A cost of zero may be left out.
            cost = int(fields[len(positions)]) if len(fields) > len(positions) else 0
            if fn is not None:
                self.functions[fn] += cost
            if positions[0] == "instr":
                key = (obj, addr)
                self.code[key] = self.code.get(key, 0) + cost

    def code_lines(self, requests, share=0.5):
        """Distinct 64-byte lines of code with an instruction that ran at least `share` times per
        request: what each request fetches."""
        floor = share * max(requests, 1)
        return len({(obj, addr // LINE) for (obj, addr), n in self.code.items() if n >= floor})


def read(path):
    return Dump(path.read_text(errors="replace"))
