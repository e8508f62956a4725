-- expect: runtime_error: os.date format length
return os.date(string.rep("%c", 100000))
