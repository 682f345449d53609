from miniplm.cli import main

raise SystemExit(main())
