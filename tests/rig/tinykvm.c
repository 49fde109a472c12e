/* tinykvm - the smallest VMM the rig needs: one VM, one vCPU, port-I/O exits on demand.
 *
 * Usage: tinykvm             (prints "ready <pid>" once the VM exists)
 * Then, per line "N" on stdin: the guest executes `out 0x10, al` exactly N times (N
 * KVM_EXIT_IO exits to this process), then one `out 0x11, al` (the parking exit), then halts;
 * prints "done N". Between commands the vCPU thread sleeps inside ioctl(KVM_RUN) on a halted
 * vCPU (in-kernel irqchip), so /proc/PID/task/TID/syscall shows it in KVM_RUN, which is how
 * vcheck finds vCPU threads of a VMM it does not know. EOF on stdin ends the program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM_SIZE 0x10000
#define CODE_LOOP 0x1000   /* out 0x10, al ; jmp CODE_LOOP */
#define CODE_PARK 0x1010   /* out 0x11, al ; hlt ; jmp CODE_PARK+2 */

static int vcpu_fd;
static struct kvm_run *run;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static long wanted = -1, finished = -1;
static pthread_t vcpu_thread;

static void die(const char *what) { perror(what); exit(1); }

static void set_rip(uint64_t rip)
{
    struct kvm_regs regs;
    if (ioctl(vcpu_fd, KVM_GET_REGS, &regs) < 0) die("KVM_GET_REGS");
    regs.rip = rip;
    regs.rflags = 2;
    if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    /* a halted vCPU stays halted in KVM_RUN until an interrupt: wake it explicitly */
    struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
    if (ioctl(vcpu_fd, KVM_SET_MP_STATE, &mp) < 0) die("KVM_SET_MP_STATE");
}

static void on_kick(int sig) { (void)sig; }

/* KVM_RUN that retries when a late kick interrupts it before the guest ran */
static void run_once(void)
{
    while (ioctl(vcpu_fd, KVM_RUN, 0) < 0) {
        if (errno != EINTR) die("KVM_RUN");
    }
}

static void *vcpu_main(void *arg)
{
    (void)arg;
    for (;;) {
        /* park: halted inside KVM_RUN until kicked by a signal */
        int r = ioctl(vcpu_fd, KVM_RUN, 0);
        if (r < 0 && errno != EINTR) die("KVM_RUN");
        pthread_mutex_lock(&lock);
        long n = wanted;
        wanted = -1;
        pthread_mutex_unlock(&lock);
        if (n < 0)
            continue;
        /* no kick may interrupt the counted exits: a retried `out` could be traced twice */
        sigset_t kick;
        sigemptyset(&kick);
        sigaddset(&kick, SIGUSR1);
        pthread_sigmask(SIG_BLOCK, &kick, NULL);
        set_rip(CODE_LOOP);
        for (long i = 0; i < n; i++) {
            run_once();
            if (run->exit_reason != KVM_EXIT_IO || run->io.port != 0x10) {
                fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
                exit(1);
            }
        }
        set_rip(CODE_PARK);
        run_once();   /* the parking out 0x11 */
        pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
        pthread_mutex_lock(&lock);
        finished = n;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(void)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
    uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) die("mmap");
    const uint8_t loop[] = {0xE6, 0x10, 0xEB, 0xFC};
    const uint8_t park[] = {0xE6, 0x11, 0xF4, 0xEB, 0xFD};
    memcpy(mem + CODE_LOOP, loop, sizeof(loop));
    memcpy(mem + CODE_PARK, park, sizeof(park));
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem};
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
    vcpu_fd = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu_fd < 0) die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");
    struct kvm_sregs sregs;
    if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    set_rip(CODE_PARK + 2);      /* start halted */

    struct sigaction sa = {.sa_handler = on_kick};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);   /* no SA_RESTART: KVM_RUN returns EINTR */
    if (pthread_create(&vcpu_thread, NULL, vcpu_main, NULL)) die("pthread_create");

    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        long n = strtol(line, NULL, 10);
        pthread_mutex_lock(&lock);
        wanted = n;
        finished = -1;
        pthread_mutex_unlock(&lock);
        pthread_mutex_lock(&lock);
        while (wanted >= 0) {          /* kick until the vCPU thread has taken the order */
            pthread_mutex_unlock(&lock);
            pthread_kill(vcpu_thread, SIGUSR1);
            usleep(1000);
            pthread_mutex_lock(&lock);
        }
        while (finished < 0)
            pthread_cond_wait(&cond, &lock);
        pthread_mutex_unlock(&lock);
        printf("done %ld\n", n);
        fflush(stdout);
    }
    return 0;
}
