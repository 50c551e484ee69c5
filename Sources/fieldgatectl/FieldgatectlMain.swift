import ArgumentParser
import FieldgateCtl

/// `fieldgatectl` as a program of its own (the package links /usr/bin/fieldgatectl to fieldgated instead).
@main
struct FieldgatectlMain {
    static func main() async { await Fieldgatectl.runAsProgram() }
}
