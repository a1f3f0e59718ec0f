import gc

from ocirun.cli import main

gc.disable()  # as the installed launcher does (see launcher._BOOT)
raise SystemExit(main())
