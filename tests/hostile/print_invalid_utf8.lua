-- expect: ok: "after"
-- print of bytes that are not UTF-8 (Latin-1 text) failed the script with a conversion error;
-- it prints them as U+FFFD, as does a __tostring that returns such bytes.
print("caf\xe9", 1e300, setmetatable({}, { __tostring = function() return "\xff" end }))
return "after"
