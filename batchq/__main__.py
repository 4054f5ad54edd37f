from batchq.cli import main

if __name__ == "__main__":  # not when a checking process (service.check_parts) starts
    main()
