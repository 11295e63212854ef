#!/usr/bin/env bash
# Flash and static RAM that the NoMQ engine + crypto add to a bare-metal firmware.
#
# Builds nomq-esp/footprint, a minimal firmware, for each target: without NoMQ (the
# baseline) and with one node at small MCU capacities and at the default capacities.
# Prints each ELF's sections (llvm-size -A) and each variant minus the baseline, which
# is the cost of "engine + crypto", checked against the goal: at most 48 KiB of .text
# and 8 KiB of static RAM (.data + .bss). A GAP is reported, not an error: the script
# fails only when a build or a tool fails.
#
# Usage: bash scripts/footprint.sh [--markdown] [--compact-crypto] [ESP32C3_ELF]
#   --markdown        print the tables as Markdown (for docs/FOOTPRINT.md)
#   --compact-crypto  also build the MCU variant with the crypto crates' compact software
#                     backends (--cfg aes_backend_soft="compact", sha2_backend_soft="compact");
#                     one more build of `core` per target, about a minute each
#   ESP32C3_ELF       (or the environment variable of that name) also size an ESP32-C3
#                     firmware ELF, section by section
#
# Needs Debian's rustc/cargo 1.96 with the std sources and llvm-size-22, llvm-readelf-22,
# llvm-nm-22:
#   apt-get install -y rustc-web cargo-web rust-web-src rust-web-llvm lld-22
# (see docs/FOOTPRINT.md). Build logs go to nomq-esp/footprint/target/footprint/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
crate=$root/nomq-esp/footprint
out=$crate/target/footprint
size_tool=${LLVM_SIZE:-llvm-size-22}
readelf_tool=${LLVM_READELF:-llvm-readelf-22}
nm_tool=${LLVM_NM:-llvm-nm-22}

targets=(thumbv7em-none-eabihf riscv32imc-unknown-none-elf)
# The goals for "engine + crypto" (variant minus baseline).
goal_text=$((48 * 1024))
goal_ram=$((8 * 1024))

markdown=0
compact=0
esp_elf=${ESP32C3_ELF:-}
for arg in "$@"; do
    case $arg in
        --markdown) markdown=1 ;;
        --compact-crypto) compact=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        -*)
            echo "footprint: unknown option $arg (see --help)" >&2
            exit 2
            ;;
        *) esp_elf=$arg ;;
    esac
done

for tool in /usr/bin/cargo /usr/bin/rustc "$size_tool" "$readelf_tool" "$nm_tool"; do
    if ! command -v "$tool" >/dev/null; then
        echo "footprint: $tool not found; install Debian's toolchain:" \
            "apt-get install -y rustc-web cargo-web rust-web-src rust-web-llvm lld-22" >&2
        exit 1
    fi
done
if [[ -n $esp_elf && ! -f $esp_elf ]]; then
    echo "footprint: ESP32-C3 ELF $esp_elf not found" >&2
    exit 1
fi

# Debian's toolchain in a clean environment: rustup's variables would pick another
# compiler, whose `core` does not match Debian's std sources.
debian_cargo() {
    env -u RUSTUP_TOOLCHAIN -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u RUSTC_WRAPPER \
        -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
        PATH=/usr/bin:/bin:/usr/sbin:/sbin RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
        RUSTC_BOOTSTRAP=1 "$@"
}

# build TARGET NAME TARGET_DIR RUSTFLAGS [CARGO ARGS...]: builds one variant and copies
# its ELF to $out/TARGET/NAME.elf. Variants of one target share a target dir, so `core`
# and the dependencies are built once and only the firmware crate is rebuilt per
# feature set. An empty RUSTFLAGS keeps the target's flags from .cargo/config.toml.
build() {
    local target=$1 name=$2 dir=$3 flags=$4
    shift 4
    local log=$out/$target/$name.log start=$SECONDS
    local cmd=(/usr/bin/cargo build --release -Zbuild-std=core --target "$target"
        --target-dir "$dir" "$@")
    if [[ -n $flags ]]; then cmd=(env RUSTFLAGS="$flags" "${cmd[@]}"); fi
    mkdir -p "$out/$target"
    printf 'footprint: building %-28s %-17s' "$target" "$name" >&2
    if ! (cd "$crate" && debian_cargo "${cmd[@]}") >"$log" 2>&1; then
        echo " FAILED (log: $log)" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    cp "$dir/$target/release/nomq-footprint" "$out/$target/$name.elf"
    echo " $((SECONDS - start)) s" >&2
}

# sections ELF: one line per allocated section, "name size addr class", with sizes and
# addresses from `llvm-size -A` and the class from the section's flags (llvm-readelf):
# executable → text; without file contents → bss; writable → data; any other allocated
# section → rodata. Unallocated sections (debug info, symbols, comments) are left out,
# and so are reservations that hold no statics: the runtime's .stack and .heap regions
# and the linker's address-space placeholders (*dummy*, *_gap*).
sections() {
    local elf=$1
    awk '
        NR == FNR {
            if ($0 !~ /^ *\[ *[0-9]+\]/) next
            sub(/^ *\[ *[0-9]+\] */, "")
            if (NF < 10 || $7 !~ /A/) next
            name = $1; type = $2; flags = $7
            if (name == ".stack" || name == ".heap" || name ~ /dummy|_gap/) next
            if (flags ~ /X/) cls[name] = "text"
            else if (type == "NOBITS") cls[name] = "bss"
            else if (flags ~ /W/) cls[name] = "data"
            else cls[name] = "rodata"
            next
        }
        ($1 in cls) { print $1, $2, $3, cls[$1] }
    ' <("$readelf_tool" -S -W "$elf") <("$size_tool" -A "$elf")
}

# totals ELF: "text rodata data bss" of an ELF.
totals() {
    sections "$1" | awk '
        { s[$4] += $2 }
        END { printf "%d %d %d %d\n", s["text"], s["rodata"], s["data"], s["bss"] }'
}

# origins ELF: "engine crypto builtins other" bytes of code, by the demangled names of
# the ELF's function symbols. With LTO most of the engine is inlined into the firmware's
# `main`, which therefore counts as engine (the baseline's own code is a few bytes).
origins() {
    "$nm_tool" -S -C --defined-only "$1" | awk '
        NF >= 4 && ($3 == "t" || $3 == "T") {
            n = $0; sub(/^[^ ]+ [^ ]+ [tT] /, "", n)
            b = strtonum_hex($2)
            crypto = "(^|[^a-z_])(aes|sha2|hmac|digest|cipher|block_buffer|crypto_common)::"
            if (n ~ crypto) c["crypto"] += b
            else if (n ~ /compiler_builtins::|^__aeabi_|^mem(cpy|move|set|cmp)$/) c["builtins"] += b
            else if (n ~ /nomq|^main$|__cortex_m_rt_main/) c["engine"] += b
            else c["other"] += b
        }
        function strtonum_hex(h,   i, v) {
            v = 0
            for (i = 1; i <= length(h); i++)
                v = v * 16 + index("0123456789abcdef", tolower(substr(h, i, 1))) - 1
            return v
        }
        END { printf "%d %d %d %d\n", c["engine"], c["crypto"], c["builtins"], c["other"] }'
}

kib() {
    awk -v b="$1" 'BEGIN { printf "%.1f", b / 1024 }'
}

# Table output, plain or Markdown.
heading() {
    if ((markdown)); then printf '\n#### %s\n\n' "$1"; else printf '\n== %s\n' "$1"; fi
}
row() {
    if ((markdown)); then
        printf '|'
        printf ' %s |' "$@"
        printf '\n'
    else
        printf '%-28s %8s %8s %6s %7s %8s %11s\n' "$@"
    fi
}
rule() {
    if ((markdown)); then
        echo '|---|--:|--:|--:|--:|--:|--:|'
    fi
}
# note WORDS...: a line of text (words joined by spaces).
note() {
    if ((markdown)); then printf '\n%s\n' "$*"; else printf '%s\n' "$*"; fi
}

# verdict NAME DTEXT DRAM: the goal check of one variant.
verdict() {
    local name=$1 dtext=$2 dram=$3 t r
    if ((dtext <= goal_text)); then
        t="MEETS .text $dtext <= $goal_text"
    else
        t="GAP .text $dtext > $goal_text (+$((dtext - goal_text)))"
    fi
    if ((dram <= goal_ram)); then
        r="MEETS RAM $dram <= $goal_ram"
    else
        r="GAP RAM $dram > $goal_ram (+$((dram - goal_ram)))"
    fi
    if ((markdown)); then
        printf -- '- **%s**: %s; %s\n' "$name" "$t" "$r"
    else
        printf '  %-28s %s; %s\n' "$name" "$t" "$r"
    fi
}

started=$SECONDS
# Plain tables are aligned by bytes: keep them ASCII.
delta=delta
if ((markdown)); then delta=Δ; fi
variants=(baseline caps-mcu caps-default)
declare -A label=(
    [baseline]="baseline (no NoMQ)"
    [caps-mcu]="NoMQ, MCU capacities"
    [caps-default]="NoMQ, default capacities"
    [caps-mcu-compact]="NoMQ, MCU, compact crypto"
)
if ((compact)); then
    variants+=(caps-mcu-compact)
fi

for target in "${targets[@]}"; do
    build "$target" baseline "$crate/target" ""
    build "$target" caps-mcu "$crate/target" "" --features caps-mcu
    build "$target" caps-default "$crate/target" "" --features caps-default
    if ((compact)); then
        # RUSTFLAGS replaces the target's rustflags from .cargo/config.toml: repeat the
        # linker scripts. Other flags mean another `core`, so another target dir.
        flags="-C link-arg=-Tlink.x"
        if [[ $target == riscv32* ]]; then flags="-C link-arg=-Tmemory.x $flags"; fi
        flags="$flags --cfg aes_backend_soft=\"compact\" --cfg sha2_backend_soft=\"compact\""
        build "$target" caps-mcu-compact "$crate/target/compact" "$flags" --features caps-mcu
    fi
done

if ((markdown)); then
    echo "### Engine + crypto on bare-metal targets"
else
    echo
    echo "NoMQ footprint: llvm-size -A, bytes (flash = text + rodata + data; RAM = data + bss)"
fi
for target in "${targets[@]}"; do
    heading "$target"
    row variant .text .rodata .data .bss flash "static RAM"
    rule
    declare -A t=() ro=() d=() b=()
    for v in "${variants[@]}"; do
        read -r t[$v] ro[$v] d[$v] b[$v] < <(totals "$out/$target/$v.elf")
        row "${label[$v]}" "${t[$v]}" "${ro[$v]}" "${d[$v]}" "${b[$v]}" \
            $((t[$v] + ro[$v] + d[$v])) $((d[$v] + b[$v]))
    done
    for v in "${variants[@]:1}"; do
        dt=$((t[$v] - t[baseline])) dro=$((ro[$v] - ro[baseline]))
        dd=$((d[$v] - d[baseline])) db=$((b[$v] - b[baseline]))
        row "$delta ${label[$v]#NoMQ, }" "$dt" "$dro" "$dd" "$db" $((dt + dro + dd)) $((dd + db))
    done
    note "Engine + crypto (Δ = variant − baseline) against the goal" \
        "(.text ≤ 48 KiB, static RAM ≤ 8 KiB):"
    if ((markdown)); then echo; fi
    for v in "${variants[@]:1}"; do
        verdict "${label[$v]}" $((t[$v] - t[baseline])) \
            $((d[$v] + b[$v] - d[baseline] - b[baseline]))
    done
    note "Code by origin (function symbols; engine includes what LTO inlined into main):"
    if ((markdown)); then
        echo
        echo '| variant | engine | crypto (aes, sha2, hmac) | compiler-builtins | core, runtime |'
        echo '|---|--:|--:|--:|--:|'
    fi
    for v in "${variants[@]}"; do
        read -r oe oc ob oo < <(origins "$out/$target/$v.elf")
        if ((markdown)); then
            printf '| %s | %d | %d | %d | %d |\n' "${label[$v]}" "$oe" "$oc" "$ob" "$oo"
        else
            printf '  %-28s engine %6d  crypto %6d  builtins %5d  core/runtime %5d\n' \
                "${label[$v]}" "$oe" "$oc" "$ob" "$oo"
        fi
    done
    unset t ro d b
done

if [[ -n $esp_elf ]]; then
    heading "ESP32-C3 firmware: $esp_elf"
    if ((markdown)); then
        echo '| section | bytes | address | class | memory |'
        echo '|---|--:|--:|---|---|'
    else
        printf '%-28s %9s %12s %-7s %s\n' section bytes address class memory
    fi
    # Where each section lives on the ESP32-C3 (TRM memory map), in decimal for awk:
    # flash through the cache, IROM 0x42000000 and DROM 0x3c000000 (8 MiB each); internal
    # SRAM on the data bus, DRAM 0x3fc80000-0x3fce0000, and on the instruction bus, IRAM
    # 0x4037c000-0x403e0000; RTC fast memory 0x50000000 (8 KiB).
    esp_regions='
        function region(a) {
            if (a >= 1107296256 && a < 1115684864) return "flash (IROM)"
            if (a >= 1006632960 && a < 1015021568) return "flash (DROM)"
            if (a >= 1070071808 && a < 1070465024) return "SRAM (DRAM)"
            if (a >= 1077395456 && a < 1077805056) return "SRAM (IRAM)"
            if (a >= 1342177280 && a < 1342185472) return "RTC fast"
            return "?"
        }'
    # The non-empty sections.
    sections "$esp_elf" | awk -v md="$markdown" "$esp_regions"'
        $2 > 0 {
            r = region($3 + 0)
            if (md) printf "| %s | %d | 0x%08x | %s | %s |\n", $1, $2, $3, $4, r
            else printf "%-28s %9d   0x%08x %-7s %s\n", $1, $2, $3, $4, r
        }'
    read -r et ero ed eb < <(totals "$esp_elf")
    # Flash: every section with file contents. RAM: every section placed in SRAM or RTC
    # memory, including code copied to IRAM at boot (.trap, .rwtext).
    read -r eflash eram < <(sections "$esp_elf" | awk "$esp_regions"'
        $4 != "bss" { f += $2 }
        region($3 + 0) !~ /^flash|\?/ { r += $2 }
        END { printf "%d %d\n", f, r }')
    note "Summary: text $et, rodata $ero, data $ed, bss $eb;" \
        "flash image $eflash ($(kib "$eflash") KiB)," \
        "static RAM incl. IRAM code $eram ($(kib "$eram") KiB)."
fi

note "Time: $((SECONDS - started)) s."
