#!/usr/bin/env python3
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
    sys.exit("prctl failed")
os.execv("/work/main/target/release/leftpad", ["leftpad"] + sys.argv[1:])
