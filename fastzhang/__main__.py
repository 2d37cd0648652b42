from fastzhang.cli import main

raise SystemExit(main())
