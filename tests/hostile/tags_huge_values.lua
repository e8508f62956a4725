-- expect: ok: "too_many_tags"
-- One 8 MiB string behind 64 tags: the host copied every value (512 MiB outside the Lua
-- allocator's limit, over half a second per call) before refusing the count. Counts and
-- lengths are now judged on the borrowed strings first; rejections are not cached, so each of
-- these calls was a full copy.
local s = string.rep("x", 4 * 1024 * 1024)
local big = s .. s
s = nil
local first
for n = 1, 300 do
  local tags = {}
  for i = 1, 64 do tags["k" .. i] = big end
  local _, why = helpers.metrics.count("a.b_count", 1, tags)
  first = first or why
end
-- A long value alone is too long, without a copy either.
local _, why = helpers.metrics.count("a.b_count", 1, { k = big })
assert(why == "tag_value_too_long", why)
return first
