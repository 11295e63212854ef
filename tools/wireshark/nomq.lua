-- Wireshark dissector for the NoMQ wire protocol, version 4 (docs/PROTOCOL.md §1).
--
--   tshark -X lua_script:tools/wireshark/nomq.lua -r capture.pcap -Y nomq -V
--
-- or copy this file to ~/.local/lib/wireshark/plugins/ (see tools/wireshark/README.md).
-- Registered on UDP port 8888 and as a heuristic UDP dissector (magic 0x4E4D followed by
-- version 0x01 to 0x04), so traffic on any port decodes. Versions 1 to 3 are shown as
-- unsupported, as NoMQ refuses them. A datagram may carry several packets back to back
-- (PROTOCOL.md §1.2): each is a NoMQ tree of its own. Requires Wireshark >= 3.6 (Lua 5.2
-- to 5.4).
--
-- The header is decoded field by field; the ciphertext and MAC are shown as bytes. There
-- is no decryption: Wireshark's Lua API offers no AES or HMAC (see the README).

local nomq = Proto("nomq", "NoMQ")

local HEADER_LEN = 57
local MAC_LEN = 32
local OVERHEAD = HEADER_LEN + MAC_LEN
local MAGIC = 0x4E4D
local VERSION = 4
local DEFAULT_PORT = 8888

local type_names = {
    [0x01] = "PUBLISH",
    [0x02] = "SUBSCRIBE",
    [0x03] = "PUBACK",
    [0x04] = "UNSUBSCRIBE",
    [0x05] = "HEARTBEAT",
    [0x06] = "PUBREC",
    [0x07] = "PUBREL",
    [0x08] = "PUBCOMP",
    [0x09] = "CHALLENGE",
}

local version_names = {
    [0x01] = "Legacy: reference MicroPython NoMQ, refused",
    [0x02] = "NoMQ v2 (no key id), refused",
    [0x03] = "NoMQ v3 (one packet per datagram), refused",
    [0x04] = "NoMQ v4",
}

local qos_names = {
    [0] = "At most once",
    [1] = "At least once",
    [2] = "Exactly once",
    [3] = "Reserved",
}

local f = {
    magic = ProtoField.uint16("nomq.magic", "Magic", base.HEX),
    version = ProtoField.uint8("nomq.version", "Version", base.DEC, version_names),
    type = ProtoField.uint8("nomq.type", "Type", base.HEX, type_names),
    flags = ProtoField.uint8("nomq.flags", "Flags", base.HEX),
    qos = ProtoField.uint8("nomq.flags.qos", "QoS", base.DEC, qos_names, 0x03),
    retain = ProtoField.bool("nomq.flags.retain", "Retain", 8, nil, 0x04),
    dup = ProtoField.bool("nomq.flags.dup", "Dup (retransmission)", 8, nil, 0x08),
    priority = ProtoField.uint8("nomq.flags.priority", "Priority", base.DEC, nil, 0xF0),
    packet_id = ProtoField.uint32("nomq.packet_id", "Packet id", base.DEC),
    session_id = ProtoField.uint32("nomq.session_id", "Session id", base.HEX),
    ttl = ProtoField.uint16("nomq.ttl", "TTL (s)", base.DEC),
    iv = ProtoField.bytes("nomq.iv", "IV"),
    timestamp = ProtoField.absolute_time("nomq.timestamp", "Timestamp", base.UTC),
    channel_id = ProtoField.bytes("nomq.channel_id", "Channel id"),
    key_id = ProtoField.uint32("nomq.key_id", "Key id", base.HEX),
    payload_len = ProtoField.uint16("nomq.payload_len", "Payload length", base.DEC),
    ciphertext = ProtoField.bytes("nomq.ciphertext", "Ciphertext (AES-256-CBC)"),
    mac = ProtoField.bytes("nomq.mac", "MAC (HMAC-SHA256)"),
    packet_len = ProtoField.uint32("nomq.packet_len", "Packet length", base.DEC),
}
nomq.fields = {
    f.magic, f.version, f.type, f.flags, f.qos, f.retain, f.dup, f.priority, f.packet_id,
    f.session_id, f.ttl, f.iv, f.timestamp, f.channel_id, f.key_id, f.payload_len, f.ciphertext,
    f.mac, f.packet_len,
}

local e = {
    too_short = ProtoExpert.new("nomq.too_short", "Packet too short",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_magic = ProtoExpert.new("nomq.bad_magic", "Bad magic",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_version = ProtoExpert.new("nomq.unsupported_version", "Unsupported version",
        expert.group.PROTOCOL, expert.severity.ERROR),
    unknown_type = ProtoExpert.new("nomq.unknown_type", "Unknown packet type",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_qos = ProtoExpert.new("nomq.reserved_qos", "Reserved QoS 3",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_payload_len = ProtoExpert.new("nomq.bad_payload_len",
        "Payload length not a non-zero multiple of 16",
        expert.group.MALFORMED, expert.severity.ERROR),
    length_mismatch = ProtoExpert.new("nomq.length_mismatch", "Length mismatch",
        expert.group.MALFORMED, expert.severity.ERROR),
    several = ProtoExpert.new("nomq.several_packets", "Several packets in one datagram",
        expert.group.PROTOCOL, expert.severity.NOTE),
}
nomq.experts = {
    e.too_short, e.bad_magic, e.bad_version, e.unknown_type, e.bad_qos,
    e.bad_payload_len, e.length_mismatch, e.several,
}

local function type_name(t)
    return type_names[t] or string.format("Unknown(0x%02x)", t)
end

-- Dissects one packet at `offset`; returns the number of bytes it took (at least 1) and a
-- short summary for the Info column.
local function dissect_one(tvb, pinfo, root, offset, index)
    local remaining = tvb:len() - offset
    if remaining < HEADER_LEN then
        local tree = root:add(nomq, tvb(offset, remaining), "NoMQ (truncated header)")
        if remaining >= 2 then
            tree:add(f.magic, tvb(offset, 2))
        end
        if remaining >= 3 then
            tree:add(f.version, tvb(offset + 2, 1))
        end
        tree:add_proto_expert_info(e.too_short, string.format(
            "Too short: %d bytes, a header is %d and a packet at least %d",
            remaining, HEADER_LEN, OVERHEAD + 16))
        return remaining, "NoMQ truncated"
    end

    local magic = tvb(offset, 2):uint()
    local version = tvb(offset + 2, 1):uint()
    local ptype = tvb(offset + 3, 1):uint()
    local flags = tvb(offset + 4, 1):uint()
    local pid = tvb(offset + 5, 4):uint()
    local sess = tvb(offset + 9, 4):uint()
    local n = tvb(offset + 55, 2):uint()
    -- Plain arithmetic, not bit32: Wireshark 4.4+ runs Lua 5.4, which has no bit32.
    local qos = flags % 4
    local retain = math.floor(flags / 4) % 2 == 1
    local dup = math.floor(flags / 8) % 2 == 1
    local priority = math.floor(flags / 16)
    local total = OVERHEAD + n
    local len = math.min(total, remaining)

    local summary = string.format("%s QoS%d sess=0x%08x pid=%d", type_name(ptype), qos, sess, pid)
    if retain then
        summary = summary .. " retain"
    end
    if dup then
        summary = summary .. " dup"
    end

    local tree = root:add(nomq, tvb(offset, len))
    tree:append_text(", " .. summary)
    if index > 1 then
        tree:add_proto_expert_info(e.several, string.format(
            "Packet %d of this datagram (coalesced, PROTOCOL.md §1.2)",
            index))
    end

    local it = tree:add(f.magic, tvb(offset, 2))
    if magic ~= MAGIC then
        it:add_proto_expert_info(e.bad_magic, string.format(
            "Bad magic 0x%04x (expected 0x%04x)", magic, MAGIC))
    end
    it = tree:add(f.version, tvb(offset + 2, 1))
    if version ~= VERSION then
        it:add_proto_expert_info(e.bad_version, string.format(
            "Unsupported version %d (this dissector and NoMQ decode version %d)", version, VERSION))
    end
    it = tree:add(f.type, tvb(offset + 3, 1))
    if not type_names[ptype] then
        it:add_proto_expert_info(e.unknown_type, string.format("Unknown packet type 0x%02x", ptype))
    end
    local ft = tree:add(f.flags, tvb(offset + 4, 1))
    it = ft:add(f.qos, tvb(offset + 4, 1))
    if qos == 3 then
        it:add_proto_expert_info(e.bad_qos, "Reserved QoS 3 (refused as InvalidQos)")
    end
    ft:add(f.retain, tvb(offset + 4, 1))
    ft:add(f.dup, tvb(offset + 4, 1))
    ft:add(f.priority, tvb(offset + 4, 1))
    ft:append_text(string.format(" (QoS %d%s%s, priority %d)", qos,
        retain and ", retain" or "",
        dup and ", dup" or "",
        priority))
    tree:add(f.packet_id, tvb(offset + 5, 4))
    tree:add(f.session_id, tvb(offset + 9, 4))
    tree:add(f.ttl, tvb(offset + 13, 2))
    tree:add(f.iv, tvb(offset + 15, 16))
    tree:add(f.timestamp, tvb(offset + 31, 4), NSTime.new(tvb(offset + 31, 4):uint(), 0))
    tree:add(f.channel_id, tvb(offset + 35, 16))
    tree:add(f.key_id, tvb(offset + 51, 4))
    it = tree:add(f.payload_len, tvb(offset + 55, 2))
    if n == 0 or n % 16 ~= 0 then
        it:add_proto_expert_info(e.bad_payload_len, string.format(
            "Payload length %d is not a non-zero multiple of 16", n))
    end
    local pl = tree:add(f.packet_len, total)
    pl:set_generated()

    local body = math.min(n, remaining - HEADER_LEN)
    if body > 0 then
        tree:add(f.ciphertext, tvb(offset + HEADER_LEN, body))
    end
    local mac = math.min(MAC_LEN, remaining - HEADER_LEN - body)
    if mac > 0 then
        tree:add(f.mac, tvb(offset + HEADER_LEN + body, mac))
    end

    if total > remaining then
        tree:add_proto_expert_info(e.length_mismatch, string.format(
            "Length mismatch: 57 + %d + 32 = %d, but the datagram has %d bytes%s",
            n, total, remaining, offset > 0 and " left" or ""))
    elseif total < remaining then
        -- Either another packet follows (coalesced), or trailing junk.
        local rest = remaining - total
        local next_ok = rest >= 3 and tvb(offset + total, 2):uint() == MAGIC
        if not next_ok then
            tree:add_proto_expert_info(e.length_mismatch, string.format(
                "Length mismatch: 57 + %d + 32 = %d, but the datagram has %d bytes%s",
                n, total, remaining, offset > 0 and " left" or ""))
            -- Take the whole remainder: it is not a packet.
            return remaining, summary
        end
    end
    return len, summary
end

function nomq.dissector(tvb, pinfo, root)
    local length = tvb:len()
    if length == 0 then
        return 0
    end
    pinfo.cols.protocol = "NoMQ"
    local offset = 0
    local index = 0
    local summaries = {}
    -- Each packet takes at least one byte, so this ends after at most `length` rounds.
    while offset < length do
        index = index + 1
        local taken, summary = dissect_one(tvb, pinfo, root, offset, index)
        summaries[#summaries + 1] = summary
        offset = offset + taken
    end
    pinfo.cols.info = table.concat(summaries, ", ")
    return length
end

local function heuristic(tvb, pinfo, root)
    if tvb:len() < 3 then
        return false
    end
    if tvb(0, 2):uint() ~= MAGIC then
        return false
    end
    local v = tvb(2, 1):uint()
    if v < 1 or v > 4 then
        return false
    end
    nomq.dissector(tvb, pinfo, root)
    return true
end

DissectorTable.get("udp.port"):add(DEFAULT_PORT, nomq)
nomq:register_heuristic("udp", heuristic)
