from dpd.cli import main

raise SystemExit(main())
