"""SASS text -> control-flow graph -> dynamic instruction counts per execution pipe (sm_90).

Pure Python, no GPU and no Triton needed: the input is the text ``nvdisasm -c`` (or
``cuobjdump -sass``) prints for a cubin. ``bench/static.py`` uses it to predict what a kernel
costs per element; ``tests/test_static_model.py`` checks it on hand-written snippets.

Model (documented in docs/benchmarks.md, "Static sm_90 cost model"):

* Basic blocks start at the entry, at every label or branch target, and after every branch or
  ``EXIT``. ``BRA`` with no guard (or ``@PT``) has one successor; a guarded ``BRA`` has two
  (target and fall-through); an unguarded ``EXIT``/``RET``/trap has none, a guarded one falls
  through. ``@!PT`` never fires. Blocks not reachable from the entry count 0 (the trailing
  ``BRA`` self-loop padding, for instance).
* Loops are the natural loops of back edges ``u -> h`` where ``h`` dominates ``u``; loops
  sharing a header are one loop. Each loop gets a trip count (iterations per entry), given in
  program order (by header address); a block's weight is the product of the trip counts of all
  loops that contain it, so nested loops multiply.
* Every other reachable block counts once, whichever side of a runtime ``if`` it is on. That
  over-counts code behind rare guards (``pid == 0`` stores, the graph-capture seed path); the
  error is at most the size of those blocks per program, which ``static_instructions`` in the
  report bounds, and it is amortised over every element a program handles.
* Each executed instruction costs one issue slot in its warp; ``PIPES`` says which pipe it
  also occupies. Predicated-off instructions still issue, so guards change nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# --- Opcode -> pipe -----------------------------------------------------------------------------
# One table, keyed by the base opcode (the mnemonic before the first '.'). Rates are
# thread-instructions per clock per SM on sm_90 (H100/H200): 4 sub-partitions x 32 lanes issue
# 128 per clock; FP32 add/mul/fma use the FMA-heavy and FMA-lite halves (128 per clock);
# IMAD/IMUL/IDP only the FMA-heavy half (64, and they share it with FP32); integer, logic,
# compare, select and FP32 compare/min/max run on the ALU (64); MUFU and the I2F/F2I/F2F
# conversions on the XU (16); FP64 at 64 (SXM parts). Sources: CUDA C Programming Guide,
# "Arithmetic Instructions" throughput table (cc 9.0); Nsight Compute's pipeline descriptions
# (alu, fma, fmaheavy, fmalite, xu, uniform, lsu, adu, cbu); NVIDIA forum notes on GH100 pipes.
# Assumptions (not documented by NVIDIA, checked against the GPU when a session has one):
# I2FP/F2IP (the sm_86+ fast int<->float conversions) and F2FP (fp32 -> bf16x2/fp16x2 pack) on
# the ALU; MOV on the ALU; VIADD on the FMA-heavy half like IMAD; VIADDMNMX (an add fused with
# an integer min/max) on the ALU like VIMNMX, the slower of its two candidates. Opcodes not in the table fall
# into "other" and are listed in the report so a misclassification is visible.
PIPE_RATES = {"fma": 128, "imad": 64, "alu": 64, "xu": 16, "fp64": 64}

_CLASS_OPCODES = {
    "fma": "FFMA FADD FMUL FFMA32I FADD32I FMUL32I HFMA2 HADD2 HMUL2 HFMA2_32I HADD2_32I HMUL2_32I FSWZADD",
    "imad": "IMAD IMAD32I IMUL IMUL32I IDP IDP4A IMADSP VIADD",
    "alu": ("LOP3 LOP LOP32I ISETP FSETP FSET SEL FSEL SHF SHL SHR IADD3 IADD IADD32I LEA ISCADD PRMT IABS IMNMX "
            "VIMNMX VIMNMX3 FMNMX FMNMX3 HMNMX2 HSETP2 HSET2 MOV MOV32I PLOP3 P2R R2P FCHK BMSK SGXT CS2R VOTE "
            "I2FP F2IP F2FP BFE BFI ICMP FCMP VIADDMNMX"),
    "xu": "MUFU I2F F2I F2F I2I FRND POPC FLO BREV",
    "fp64": "DFMA DADD DMUL DSETP DMNMX DSET",
    # Load/store and the SM-shared MIO pipes (shuffles, constant loads, special registers):
    # counted, and they take an issue slot, but the model puts no pipe limit on them.
    "mem": ("LDG STG LDS STS LDL STL LD ST LDC ATOM ATOMG ATOMS RED LDSM STSM LDGSTS LDGDEPBAR SHFL REDUX S2R "
            "MATCH CCTL SUATOM SULD SUST TEX TLD UBLKCP UTMALDG UTMASTG"),
    # Branches, barriers and no-ops: issue slots only.
    "control": ("BRA BRX JMP JMX EXIT RET CALL BSSY BSYNC WARPSYNC BAR NOP YIELD BPT MEMBAR DEPBAR ERRBAR CGAERRBAR "
                "NANOSLEEP KILL ELECT FENCE SYNCS ACQBULK WARPGROUP"),
}
OPCODE_CLASS = {op: cls for cls, ops in _CLASS_OPCODES.items() for op in ops.split()}
# The uniform datapath (one value per warp): issue slots only.
UNIFORM_EXTRA = {"S2UR", "R2UR", "VOTEU", "ULDC"}
CLASSES = ("fma", "imad", "alu", "xu", "fp64", "mem", "uniform", "control", "other")


def base_opcode(opcode: str) -> str:
    return opcode.split(".", 1)[0]


def classify(opcode: str) -> str:
    """Pipe class of a SASS opcode (with or without modifiers, e.g. ``FFMA.FTZ``, ``MUFU.EX2``)."""
    base = base_opcode(opcode)
    if base in OPCODE_CLASS:
        return OPCODE_CLASS[base]
    if base in UNIFORM_EXTRA or (base.startswith("U") and len(base) > 1 and base[1:] in OPCODE_CLASS):
        return "uniform"
    if base.startswith("U") and base not in OPCODE_CLASS:
        # UIADD3, UMOV, ULOP3, USHF, UISETP, ULEA, UPRMT, ... (all U-prefixed scalar ops)
        return "uniform"
    return "other"


# --- Parsing ------------------------------------------------------------------------------------
_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s*(?P<body>[^;]*);")
_LABEL = re.compile(r"^\s*([.$\w]+):\s*(?://.*)?$")
_GUARD = re.compile(r"^(@!?U?P(?:T|\d+))\s+")
_LABEL_TARGET = re.compile(r"`\(([^)]+)\)")
_HEX_TARGET = re.compile(r"(0x[0-9a-fA-F]+)\s*$")
_FUNCTION = re.compile(r"^\s*(?:Function\s*:\s*(\S+)|\.text\.(\S+?):)\s*$")

TERMINATORS = {"EXIT", "RET", "KILL"}
BRANCHES = {"BRA", "BRX", "JMP", "JMX"}


@dataclass
class Instr:
    addr: int
    opcode: str              # with modifiers, e.g. "ISETP.NE.U32.AND"
    operands: str
    guard: str | None = None  # "@P0", "@!P1", "@UP0", ... or None
    target: str | int | None = None  # branch target: a label or an address

    @property
    def base(self) -> str:
        return base_opcode(self.opcode)

    @property
    def always(self) -> bool:
        return self.guard in (None, "@PT")

    @property
    def never(self) -> bool:
        return self.guard == "@!PT"

    @property
    def is_branch(self) -> bool:
        return self.base in BRANCHES

    @property
    def ends_thread(self) -> bool:
        return self.base in TERMINATORS or self.opcode.startswith("BPT.TRAP")


def parse(text: str, function: str | None = None) -> tuple[list[Instr], dict[str, int]]:
    """Instructions (in address order) and labels (name -> address of the next instruction) of
    one function of ``nvdisasm -c`` / ``cuobjdump -sass`` output: ``function``, else the first
    one that holds instructions."""
    functions: dict[str | None, tuple[list[Instr], dict[str, int]]] = {}
    pending: list[str] = []
    current = None
    for line in text.splitlines():
        fn = _FUNCTION.match(line)
        if fn:
            current, pending = fn.group(1) or fn.group(2), []
            continue
        instrs, labels = functions.setdefault(current, ([], {}))
        m = _INSTR.match(line)
        if m:
            body = m.group("body").strip()
            guard = None
            g = _GUARD.match(body)
            if g:
                guard, body = g.group(1), body[g.end():]
            opcode, _, operands = body.partition(" ")
            ins = Instr(int(m.group(1), 16), opcode.strip(), operands.strip(), guard)
            if ins.is_branch:
                t = _LABEL_TARGET.search(operands)
                if t:
                    ins.target = t.group(1)
                else:
                    t = _HEX_TARGET.search(operands.strip())
                    ins.target = int(t.group(1), 16) if t else None
            for name in pending:
                labels[name] = ins.addr
            pending = []
            instrs.append(ins)
            continue
        lab = _LABEL.match(line)
        if lab:
            pending.append(lab.group(1))
    if function is not None:
        if function not in functions:
            raise ValueError(f"no function {function!r} in the SASS (have {sorted(map(str, functions))})")
        return functions[function]
    for instrs, labels in functions.values():
        if instrs:
            return instrs, labels
    return [], {}


# --- Control-flow graph -------------------------------------------------------------------------
@dataclass
class Block:
    index: int
    instrs: list[Instr]
    succs: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)

    @property
    def addr(self) -> int:
        return self.instrs[0].addr


@dataclass
class Loop:
    header: int                 # block index
    blocks: set[int]
    latches: list[int]
    parent: int | None = None   # index into the loop list
    depth: int = 1
    trip: float | None = None
    trip_source: str = "unset"

    def to_json(self, cfg: "CFG") -> dict:
        return {"header_addr": hex(cfg.blocks[self.header].addr), "blocks": len(self.blocks),
                "instructions": sum(len(cfg.blocks[b].instrs) for b in self.blocks),
                "depth": self.depth, "trip": self.trip, "trip_source": self.trip_source}


class CFG:
    def __init__(self, instrs: list[Instr], labels: dict[str, int]):
        if not instrs:
            raise ValueError("no SASS instructions to analyse")
        self.instrs = instrs
        self.warnings: list[str] = []
        by_addr = {ins.addr: i for i, ins in enumerate(instrs)}

        def target_index(ins: Instr) -> int | None:
            addr = labels.get(ins.target) if isinstance(ins.target, str) else ins.target
            if addr is None or addr not in by_addr:
                self.warnings.append(f"unresolved branch target {ins.target!r} at {ins.addr:#x}")
                return None
            return by_addr[addr]

        leaders = {0}
        for name, addr in labels.items():
            if addr in by_addr:
                leaders.add(by_addr[addr])
        for i, ins in enumerate(instrs):
            if ins.is_branch and ins.target is not None:
                t = target_index(ins)
                if t is not None:
                    leaders.add(t)
            if (ins.is_branch or ins.ends_thread) and i + 1 < len(instrs):
                leaders.add(i + 1)
        starts = sorted(leaders)
        block_of = {}
        self.blocks: list[Block] = []
        for n, s in enumerate(starts):
            e = starts[n + 1] if n + 1 < len(starts) else len(instrs)
            self.blocks.append(Block(n, instrs[s:e]))
            block_of[s] = n
        for blk in self.blocks:
            last = blk.instrs[-1]
            nxt = blk.index + 1 if blk.index + 1 < len(self.blocks) else None
            succs: list[int] = []
            if last.never:
                succs = [nxt] if nxt is not None else []
            elif last.is_branch:
                t = target_index(last) if last.target is not None else None
                if t is None:
                    self.warnings.append(f"indirect or unknown branch {last.opcode} at {last.addr:#x}: "
                                         "treated as leaving the kernel")
                else:
                    succs.append(block_of[t])
                if not last.always and nxt is not None:
                    succs.append(nxt)
            elif last.ends_thread:
                if not last.always and nxt is not None:
                    succs.append(nxt)
            elif nxt is not None:
                succs.append(nxt)
            blk.succs = list(dict.fromkeys(succs))
        for blk in self.blocks:
            for s in blk.succs:
                self.blocks[s].preds.append(blk.index)
        self.reachable = self._reachable()
        self.dom = self._dominators()
        self.loops = self._loops()

    def _reachable(self) -> set[int]:
        seen, stack = {0}, [0]
        while stack:
            for s in self.blocks[stack.pop()].succs:
                if s not in seen:
                    seen.add(s)
                    stack.append(s)
        return seen

    def _dominators(self) -> dict[int, set[int]]:
        nodes = sorted(self.reachable)
        dom = {n: set(nodes) for n in nodes}
        dom[0] = {0}
        changed = True
        while changed:
            changed = False
            for n in nodes[1:]:
                preds = [p for p in self.blocks[n].preds if p in self.reachable]
                new = set.intersection(*(dom[p] for p in preds)) if preds else set()
                new = new | {n}
                if new != dom[n]:
                    dom[n], changed = new, True
        return dom

    def _loops(self) -> list[Loop]:
        by_header: dict[int, Loop] = {}
        for u in sorted(self.reachable):
            for h in self.blocks[u].succs:
                if h in self.dom[u]:  # back edge u -> h
                    # Walk back from the latch to the header; never past the header (a
                    # self-loop's latch is its header).
                    body, stack = {h, u}, ([u] if u != h else [])
                    while stack:
                        for p in self.blocks[stack.pop()].preds:
                            if p in self.reachable and p not in body:
                                body.add(p)
                                stack.append(p)
                    loop = by_header.setdefault(h, Loop(h, set(), []))
                    loop.blocks |= body
                    loop.latches.append(u)
                elif self.blocks[h].addr <= self.blocks[u].addr and h in self.reachable:
                    self.warnings.append(f"retreating edge {self.blocks[u].addr:#x} -> {self.blocks[h].addr:#x} "
                                         "is not a natural-loop back edge (irreducible control flow): counted once")
        loops = sorted(by_header.values(), key=lambda lp: self.blocks[lp.header].addr)
        for i, lp in enumerate(loops):
            enclosing = [j for j, other in enumerate(loops) if j != i and lp.blocks < other.blocks]
            if enclosing:
                lp.parent = min(enclosing, key=lambda j: len(loops[j].blocks))
        for lp in loops:
            depth, p = 1, lp.parent
            while p is not None:
                depth, p = depth + 1, loops[p].parent
            lp.depth = depth
        return loops

    def weights(self, trips: list[float]) -> dict[int, float]:
        """Executions of every block per thread, with ``trips[i]`` the trip count of loop ``i``."""
        if len(trips) != len(self.loops):
            raise ValueError(f"{len(self.loops)} loops, {len(trips)} trip counts")
        out = {}
        for blk in self.blocks:
            if blk.index not in self.reachable:
                out[blk.index] = 0.0
                continue
            w = 1.0
            for lp, trip in zip(self.loops, trips):
                if blk.index in lp.blocks:
                    w *= trip
            out[blk.index] = w
        return out

    def counts(self, trips: list[float]) -> dict:
        """Dynamic per-thread instruction counts: by class, by opcode, and the static totals."""
        weights = self.weights(trips)
        by_class = dict.fromkeys(CLASSES, 0.0)
        by_opcode: dict[str, float] = {}
        static = 0
        for blk in self.blocks:
            w = weights[blk.index]
            if blk.index in self.reachable:
                static += len(blk.instrs)
            for ins in blk.instrs:
                cls = classify(ins.opcode)
                by_class[cls] += w
                key = ins.base if cls != "other" else ins.opcode
                by_opcode[key] = by_opcode.get(key, 0.0) + w
        straight = sum(len(b.instrs) for b in self.blocks
                       if b.index in self.reachable and not any(b.index in lp.blocks for lp in self.loops))
        return {"by_class": by_class, "by_opcode": by_opcode, "total": sum(by_class.values()),
                "static_instructions": static, "straight_line_instructions": straight}


def analyse(text: str, trips=None, function: str | None = None) -> tuple[CFG, dict]:
    """Parse, build the CFG and count with ``trips`` (a list, or a callable ``loops -> list``)."""
    cfg = CFG(*parse(text, function))
    if callable(trips):
        trips = trips(cfg.loops)
    return cfg, cfg.counts(list(trips or []))


def sm_cycles(per_element: dict[str, float]) -> dict[str, float]:
    """SM cycles per element for each limit of the pipe model, from per-element
    thread-instruction counts by class; ``bound`` is the largest."""
    fp32_and_imad = per_element["fma"] + per_element["imad"]
    cycles = {
        "issue": sum(per_element.values()) / 128,
        "fma": fp32_and_imad / PIPE_RATES["fma"],  # FP32 and IMAD share the 128 FMA lanes
        "imad": per_element["imad"] / PIPE_RATES["imad"],
        "alu": per_element["alu"] / PIPE_RATES["alu"],
        "xu": per_element["xu"] / PIPE_RATES["xu"],
        "fp64": per_element["fp64"] / PIPE_RATES["fp64"],
    }
    return cycles
