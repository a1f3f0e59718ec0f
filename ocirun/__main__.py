from ocirun.cli import main

raise SystemExit(main())
